//! The guest's resolver (`nameserver 127.0.0.1`): each query is asked of
//! the host, which answers allowed names with addresses it maps back to the
//! name and blocked names with "no such name".

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use capsem_proto::{GuestCodec, GuestToHost, HostToGuest};
use futures::{SinkExt, StreamExt};
use simple_dns::rdata::{A, RData};
use simple_dns::{CLASS, OPCODE, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE};
use tokio::net::UdpSocket;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::codec::Framed;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::Streams;

/// Queries answered at once (their share of the stream budget); more wait
/// (and the client retries).
pub const CONCURRENT: usize = 15;
/// Seconds a guest may cache an answer. Short, so a policy change is seen
/// soon; the host keeps a name's address for the whole session anyway.
const TTL: u32 = 60;
/// How long the host may take to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Answers queries until the socket fails.
pub async fn serve(socket: UdpSocket, streams: Streams) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 1500];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!("DNS socket: {e}");
                return;
            }
        };
        // Waiting here for a stream place bounds the queries in flight.
        let Ok(place) = streams.place().await else {
            return;
        };
        let (query, socket, streams) = (buf[..len].to_vec(), socket.clone(), streams.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(&query, client, &socket, &streams, place).await {
                tracing::debug!("DNS query from {client}: {e:#}");
            }
        });
    }
}

async fn answer(
    query: &[u8],
    client: SocketAddr,
    socket: &UdpSocket,
    streams: &Streams,
    place: OwnedSemaphorePermit,
) -> Result<()> {
    let query = Packet::parse(query).context("malformed query")?;
    let reply = match question(&query) {
        // A name the protocol cannot carry exists nowhere.
        Some((name, qtype)) if capsem_proto::validate_name(&name).is_err() => {
            reply(&query, None, qtype)
        }
        Some((name, qtype)) => {
            let addr = resolve(streams, place, &name).await.unwrap_or_else(|e| {
                tracing::debug!("resolving {name}: {e:#}");
                None
            });
            reply(&query, addr, qtype)
        }
        None => refusal(&query, RCODE::NotImplemented),
    };
    socket.send_to(&reply.build_bytes_vec()?, client).await?;
    Ok(())
}

/// The one question of a standard query, as a name without the final dot.
fn question(query: &Packet<'_>) -> Option<(String, QTYPE)> {
    if query.opcode() != OPCODE::StandardQuery || query.questions.len() != 1 {
        return None;
    }
    let q = &query.questions[0];
    let name = q.qname.to_string();
    Some((name.strip_suffix('.').unwrap_or(&name).to_owned(), q.qtype))
}

async fn resolve(
    streams: &Streams,
    place: OwnedSemaphorePermit,
    name: &str,
) -> Result<Option<[u8; 4]>> {
    let stream = streams.open_in(&place).await?;
    let mut framed = Framed::new(stream.compat(), GuestCodec::new());
    framed
        .send(GuestToHost::Resolve {
            name: name.to_owned(),
        })
        .await?;
    match tokio::time::timeout(ANSWER_WAIT, framed.next()).await {
        Ok(Some(Ok(HostToGuest::Resolved(addr)))) => Ok(addr),
        _ => bail!("no answer from the host"),
    }
}

/// The answer: the address for A queries; for any other type, an empty
/// answer if the name exists (so AAAA lookups fall back to IPv4).
fn reply<'a>(query: &Packet<'a>, addr: Option<[u8; 4]>, qtype: QTYPE) -> Packet<'a> {
    let Some(addr) = addr else {
        return refusal(query, RCODE::NameError);
    };
    let mut reply = base_reply(query);
    if qtype == QTYPE::TYPE(TYPE::A) {
        let name = query.questions[0].qname.clone();
        let rdata = RData::A(A {
            address: Ipv4Addr::from(addr).into(),
        });
        reply
            .answers
            .push(ResourceRecord::new(name, CLASS::IN, TTL, rdata));
    }
    reply
}

fn refusal<'a>(query: &Packet<'a>, rcode: RCODE) -> Packet<'a> {
    let mut reply = base_reply(query);
    *reply.rcode_mut() = rcode;
    reply
}

fn base_reply<'a>(query: &Packet<'a>) -> Packet<'a> {
    let mut reply = Packet::new_reply(query.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if query.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    reply.questions = query.questions.clone();
    reply
}
