//! `cargo xtask build-assets`: kernel, initramfs and rootfs, each from the
//! cache when its inputs are unchanged, then a manifest pinning them.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use capsem_core::assets::manifest::MANIFEST_FORMAT;
use capsem_core::assets::{AssetEntry, CurrentAssets, MANIFEST_FILE, Manifest, hash_file};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cache::{self, KeyBuilder};
use crate::{initramfs, kernel, rootfs};

/// Builds of each kind kept in the cache besides the current ones.
const CACHE_KEEP: usize = 3;

/// Builds what is missing and makes it the current asset set. Returns the
/// path of `current.json`.
pub fn build() -> Result<PathBuf> {
    let logs = cache::root().join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let progress = Progress::new();
    // The kernel keeps both cores busy for minutes; the rootfs mostly waits
    // on the network and dpkg, so the two overlap well.
    let (kernel, initramfs, rootfs) = std::thread::scope(|s| {
        let kernel = s.spawn(|| progress.step("kernel", &logs, kernel::build));
        let rootfs = s.spawn(|| progress.step("rootfs", &logs, rootfs::build));
        let initramfs = progress.step("initramfs", &logs, initramfs::build);
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<PathBuf>>| {
            h.join().map_err(|_| anyhow!("a build thread panicked"))?
        };
        (join(kernel), initramfs, join(rootfs))
    });
    let (kernel, initramfs, rootfs) = (kernel?, initramfs?, rootfs?);
    let dir = assemble(&kernel, &initramfs, &rootfs)?;
    let current = CurrentAssets {
        manifest: Manifest::parse(&fs::read_to_string(dir.join(MANIFEST_FILE))?)?,
        dir,
    };
    let path = cache::current_json();
    let json = serde_json::to_string_pretty(&current)?;
    // Rewriting an unchanged file would make cargo rebuild capsem.
    if fs::read_to_string(&path).ok().as_deref() != Some(json.as_str()) {
        fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("xtask: assets ready in {}", current.dir.display());
    let removed = cache::prune(CACHE_KEEP, &[&current.dir, &kernel, &initramfs, &rootfs])?;
    if !removed.is_empty() {
        eprintln!("xtask: removed {} old cache entries", removed.len());
    }
    Ok(path)
}

/// Gathers the three artifacts in one directory with their manifest.
fn assemble(kernel: &Path, initramfs: &Path, rootfs: &Path) -> Result<PathBuf> {
    let parts = [
        (kernel, "vmlinux"),
        (kernel, "kernel.config"),
        (initramfs, "initramfs.cpio"),
        (rootfs, "rootfs.erofs"),
    ];
    let mut key = KeyBuilder::new("assets", MANIFEST_FORMAT);
    for (dir, file) in parts {
        key.add(file, dir.to_string_lossy().as_bytes());
    }
    cache::get_or_build("assets", &key.finish(), |out| {
        for (dir, file) in parts {
            cache::link_or_copy(&dir.join(file), &out.join(file))?;
        }
        let entry = |file: &str| -> Result<AssetEntry> {
            let path = out.join(file);
            Ok(AssetEntry {
                file: file.to_owned(),
                blake3: hash_file(&path)?,
                size: fs::metadata(&path)?.len(),
            })
        };
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            kernel: entry("vmlinux")?,
            initramfs: entry("initramfs.cpio")?,
            rootfs: entry("rootfs.erofs")?,
            kernel_config: "kernel.config".to_owned(),
        };
        fs::write(
            out.join(MANIFEST_FILE),
            serde_json::to_string_pretty(&manifest)?,
        )?;
        Ok(())
    })
}

/// Spinners on a terminal, plain lines elsewhere (CI logs).
struct Progress {
    bars: Option<MultiProgress>,
}

impl Progress {
    fn new() -> Self {
        Progress {
            bars: std::io::stderr().is_terminal().then(MultiProgress::new),
        }
    }

    fn say(&self, line: String) {
        match &self.bars {
            Some(bars) => bars.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Runs one build step with a spinner; its tools log to `logs/NAME.log`.
    fn step(
        &self,
        name: &str,
        logs: &Path,
        build: fn(&Path) -> Result<PathBuf>,
    ) -> Result<PathBuf> {
        let log = logs.join(format!("{name}.log"));
        let _ = fs::remove_file(&log);
        let spinner = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
            );
            bar.set_message(format!(
                "{name}: checking the cache (log: {})",
                log.display()
            ));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let started = Instant::now();
        let result = build(logs);
        if let Some(bar) = spinner {
            bar.finish_and_clear();
        }
        let took = started.elapsed().as_secs_f64();
        match &result {
            Ok(dir) => self.say(format!(
                "xtask: {name} ready ({took:.1} s): {}",
                dir.display()
            )),
            Err(e) => self.say(format!("xtask: {name} failed after {took:.1} s: {e:#}")),
        }
        result
    }
}
