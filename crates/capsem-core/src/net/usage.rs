//! Model-call accounting: for requests to Anthropic's, OpenAI's and
//! Google's model APIs, the provider, model, token counts, stop reason and
//! an estimated cost, read from the bytes as they stream past (JSON or
//! server-sent events). Nothing waits for the parse: the meter is fed
//! copies of what the guest is sent.

use serde_json::Value;

/// Most bytes of a JSON body or of one SSE line kept for parsing.
const MAX_KEPT: usize = 4 * 1024 * 1024;
/// Most bytes of a request body read for its model name.
const MAX_REQUEST: usize = 256 * 1024;

/// A model provider whose calls are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Anthropic Messages API.
    Anthropic,
    /// OpenAI Chat Completions and Responses APIs.
    OpenAi,
    /// Google Gemini API.
    Google,
}

impl Provider {
    /// The name logged.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
            Provider::Google => "google",
        }
    }
}

/// The provider of a model call, from the host and path of a POST. The
/// path is read the way the providers' servers route it ([`route`]), so a
/// trailing slash, `%3A` for `:`, a doubled `/` or a dot segment does not
/// take a call past the meter.
pub fn provider_of(host: &str, path: &str) -> Option<Provider> {
    let path = route(path);
    if host == "api.anthropic.com" && path == "/v1/messages" {
        Some(Provider::Anthropic)
    } else if host == "api.openai.com"
        && matches!(
            path.as_str(),
            "/v1/chat/completions" | "/v1/responses" | "/v1/completions"
        )
    {
        Some(Provider::OpenAi)
    } else if host == "generativelanguage.googleapis.com"
        && (path.ends_with(":generatecontent") || path.ends_with(":streamgeneratecontent"))
    {
        Some(Provider::Google)
    } else {
        None
    }
}

/// A request path as a router compares it: the query dropped,
/// percent-escapes decoded, empty and `.` segments dropped, `..` applied,
/// no trailing slash, lower case.
fn route(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let decoded = percent_decode(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/")).to_ascii_lowercase()
}

/// `%XX` escapes decoded (invalid ones kept as they are).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a call used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// The model, as the API reported it (else as requested).
    pub model: Option<String>,
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// Why generation stopped.
    pub stop_reason: Option<String>,
}

/// Reads one call's request and response as they pass.
#[derive(Debug)]
pub struct Meter {
    request: Vec<u8>,
    /// The response is server-sent events, parsed line by line.
    sse: bool,
    kept: Vec<u8>,
    overflow: bool,
    usage: Usage,
    /// The model named in the URL (Gemini).
    path_model: Option<String>,
}

impl Meter {
    /// A meter for a call to `path`.
    pub fn new(path: &str) -> Meter {
        let path = percent_decode(path.split('?').next().unwrap_or_default());
        let path_model = path
            .rsplit_once("/models/")
            .and_then(|(_, rest)| rest.split(':').next())
            .map(str::to_owned);
        Meter {
            request: Vec::new(),
            sse: false,
            kept: Vec::new(),
            overflow: false,
            usage: Usage::default(),
            path_model,
        }
    }

    /// Request body bytes.
    pub fn request(&mut self, data: &[u8]) {
        let room = MAX_REQUEST.saturating_sub(self.request.len());
        self.request
            .extend_from_slice(&data[..data.len().min(room)]);
    }

    /// The response's content type, before its body.
    pub fn response_type(&mut self, content_type: &str) {
        self.sse = content_type.starts_with("text/event-stream");
    }

    /// Response body bytes.
    pub fn response(&mut self, data: &[u8]) {
        if !self.sse {
            self.keep(data);
            return;
        }
        for (i, part) in data.split(|b| *b == b'\n').enumerate() {
            if i > 0 {
                self.sse_line();
            }
            self.keep(part);
        }
    }

    fn keep(&mut self, data: &[u8]) {
        if self.kept.len() + data.len() > MAX_KEPT {
            self.overflow = true;
        } else {
            self.kept.extend_from_slice(data);
        }
    }

    /// Parses the completed line in `kept`, if it is an SSE data line.
    fn sse_line(&mut self) {
        let line = std::mem::take(&mut self.kept);
        let overflow = std::mem::replace(&mut self.overflow, false);
        if overflow {
            return;
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(data) = text.trim_end_matches('\r').strip_prefix("data:")
            && let Ok(json) = serde_json::from_str::<Value>(data.trim())
        {
            absorb(&json, &mut self.usage);
        }
    }

    /// What the call used. The meter is spent: it may still be fed (the
    /// body it watched can outlive the call's record) but says no more.
    pub fn finish(&mut self) -> Usage {
        if self.sse {
            self.sse_line();
        } else if !self.overflow
            && let Ok(json) = serde_json::from_slice::<Value>(&self.kept)
        {
            absorb(&json, &mut self.usage);
        }
        if self.usage.model.is_none() {
            let requested = serde_json::from_slice::<Value>(&self.request).ok();
            self.usage.model = requested
                .and_then(|r| r["model"].as_str().map(str::to_owned))
                .or(self.path_model.take());
        }
        std::mem::take(&mut self.usage)
    }
}

/// Takes what one JSON document (a whole response or one event) says.
/// The three APIs differ in names, not in shape, so one walk reads them
/// all: counts only grow (streams report running totals).
fn absorb(json: &Value, usage: &mut Usage) {
    if let Value::Array(items) = json {
        items.iter().for_each(|item| absorb(item, usage));
        return;
    }
    let scopes = [json, &json["message"], &json["response"]];
    for scope in scopes {
        let model = scope["model"].as_str().or(scope["modelVersion"].as_str());
        if let Some(model) = model {
            usage.model.get_or_insert_with(|| model.to_owned());
        }
        let counts = [&scope["usage"], &scope["usageMetadata"]];
        for counts in counts {
            let input = ["input_tokens", "prompt_tokens", "promptTokenCount"];
            let output = ["output_tokens", "completion_tokens", "candidatesTokenCount"];
            let most = |names: [&str; 3]| names.iter().filter_map(|n| counts[*n].as_u64()).max();
            if let Some(n) = most(input) {
                usage.input_tokens = usage.input_tokens.max(n);
            }
            if let Some(n) = most(output) {
                usage.output_tokens = usage.output_tokens.max(n);
            }
        }
        let stop = [
            &scope["stop_reason"],
            &scope["delta"]["stop_reason"],
            &scope["choices"][0]["finish_reason"],
            &scope["candidates"][0]["finishReason"],
            // OpenAI's Responses API: `completed`, `incomplete`, `failed`.
            &scope["status"],
        ];
        if let Some(reason) = stop.iter().find_map(|v| v.as_str()) {
            usage.stop_reason = Some(reason.to_owned());
        }
    }
}

/// The checked-in price table, USD per million tokens, parsed once.
static PRICES: std::sync::LazyLock<toml::Table> = std::sync::LazyLock::new(|| {
    include_str!("prices.toml")
        .parse()
        .expect("prices.toml is checked by the tests")
});

/// The estimated cost of `usage` in USD, when the model is in the table
/// (the longest matching prefix wins).
pub fn cost(usage: &Usage) -> Option<f64> {
    let model = usage.model.as_deref()?;
    let (_, price) = PRICES
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())?;
    let rate = |name: &str| price.get(name).and_then(toml::Value::as_float);
    Some(
        usage.input_tokens as f64 * rate("input")? / 1e6
            + usage.output_tokens as f64 * rate("output")? / 1e6,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metered(path: &str, content_type: &str, chunks: &[&str]) -> Usage {
        let mut meter = Meter::new(path);
        meter.response_type(content_type);
        for chunk in chunks {
            meter.response(chunk.as_bytes());
        }
        meter.finish()
    }

    #[test]
    fn anthropic_streams_are_read_across_chunk_boundaries() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":12}}\n\n";
        let (a, b) = stream.split_at(97);
        let usage = metered("/v1/messages", "text/event-stream; charset=utf-8", &[a, b]);
        assert_eq!(
            usage,
            Usage {
                model: Some("claude-sonnet-4-5".into()),
                input_tokens: 25,
                output_tokens: 12,
                stop_reason: Some("end_turn".into()),
            }
        );
    }

    #[test]
    fn openai_and_gemini_json_are_read() {
        let openai = r#"{"model":"gpt-5-2025","choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":3}}"#;
        let usage = metered("/v1/chat/completions", "application/json", &[openai]);
        assert_eq!((usage.input_tokens, usage.output_tokens), (10, 3));
        assert_eq!(usage.stop_reason.as_deref(), Some("stop"));

        let gemini = r#"[{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":4},"modelVersion":"gemini-2.5-pro"}]"#;
        let usage = metered(
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
            "application/json",
            &[gemini],
        );
        assert_eq!(usage.model.as_deref(), Some("gemini-2.5-pro"));
        assert_eq!((usage.input_tokens, usage.output_tokens), (7, 4));
    }

    #[test]
    fn an_openai_responses_stream_is_read() {
        let stream = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"status\":\"in_progress\",\"model\":\"gpt-5\"}}\n\n\
            event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\"model\":\"gpt-5\",\"usage\":{\"input_tokens\":25,\"output_tokens\":7}}}\n\n";
        let usage = metered("/v1/responses", "text/event-stream", &[stream]);
        assert_eq!(usage.model.as_deref(), Some("gpt-5"));
        assert_eq!((usage.input_tokens, usage.output_tokens), (25, 7));
        assert_eq!(usage.stop_reason.as_deref(), Some("completed"));
    }

    #[test]
    fn the_model_falls_back_to_the_request_or_the_path() {
        let mut meter = Meter::new("/v1/messages");
        meter.request(br#"{"model":"claude-haiku-4-5","max_tokens":5}"#);
        meter.response(b"not json");
        assert_eq!(meter.finish().model.as_deref(), Some("claude-haiku-4-5"));
        let mut meter = Meter::new("/v1beta/models/gemini-2.5-flash:generateContent?key=k");
        assert_eq!(meter.finish().model.as_deref(), Some("gemini-2.5-flash"));
    }

    #[test]
    fn model_calls_are_recognised_by_host_and_path() {
        assert_eq!(
            provider_of("api.anthropic.com", "/v1/messages?beta=true"),
            Some(Provider::Anthropic)
        );
        assert_eq!(
            provider_of("api.anthropic.com", "/v1/messages/count_tokens"),
            None
        );
        assert_eq!(
            provider_of("api.openai.com", "/v1/responses"),
            Some(Provider::OpenAi)
        );
        assert_eq!(
            provider_of(
                "generativelanguage.googleapis.com",
                "/v1beta/models/g:streamGenerateContent?alt=sse"
            ),
            Some(Provider::Google)
        );
        assert_eq!(provider_of("example.com", "/v1/messages"), None);
    }

    #[test]
    fn spellings_a_router_accepts_are_metered_too() {
        for path in [
            "/v1/messages/",
            "//v1//messages",
            "/v1/./messages",
            "/v2/../v1/messages",
            "/v1/%6Dessages",
            "/V1/Messages",
        ] {
            assert_eq!(
                provider_of("api.anthropic.com", path),
                Some(Provider::Anthropic),
                "{path}"
            );
        }
        for path in [
            "/v1beta/models/g%3AgenerateContent",
            "/v1beta/models/g:generateContent/",
            "/v1beta/models/g%3astreamGenerateContent?alt=sse",
        ] {
            assert_eq!(
                provider_of("generativelanguage.googleapis.com", path),
                Some(Provider::Google),
                "{path}"
            );
        }
        assert_eq!(
            provider_of("api.openai.com", "/v1/responses/"),
            Some(Provider::OpenAi)
        );
        assert_eq!(
            provider_of("api.anthropic.com", "/v1/messages/batches"),
            None
        );
    }

    #[test]
    fn costs_come_from_the_longest_matching_prefix() {
        let usage = Usage {
            model: Some("claude-sonnet-4-5-20250929".into()),
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            stop_reason: None,
        };
        let cost = cost(&usage).unwrap();
        assert!((cost - 18.0).abs() < 1e-9, "{cost}");
        let unknown = Usage {
            model: Some("mystery-model".into()),
            ..usage
        };
        assert_eq!(super::cost(&unknown), None);
    }
}
