//! Values that must fit the host they run on: a VM with more vCPUs than
//! the host has cores, or more RAM than it has, is refused when it is set
//! (`capsem settings set`), not found out when a run crawls or fails.

/// Checks `value` of `key` against this host. `Err` says why it cannot
/// work (as the end of "'VALUE' is not ..."); `Ok` carries warnings.
pub fn fits(key: &str, value: &toml_edit::Value) -> Result<Vec<String>, String> {
    let Some(n) = value.as_integer() else {
        return Ok(Vec::new());
    };
    match key {
        "vm.cpus" => cpus(n, cores()),
        "vm.memory_mib" => memory(n, total_mib()),
        _ => Ok(Vec::new()),
    }
}

fn cpus(n: i64, cores: Option<i64>) -> Result<Vec<String>, String> {
    match cores {
        Some(cores) if n > cores => Err(format!(
            "possible here: this host has {cores} CPU{}",
            if cores == 1 { "" } else { "s" }
        )),
        _ => Ok(Vec::new()),
    }
}

fn memory(mib: i64, total: Option<i64>) -> Result<Vec<String>, String> {
    let Some(total) = total else {
        return Ok(Vec::new());
    };
    // QEMU and the host itself need room beside the guest.
    let most = total - 512;
    if mib > most {
        return Err(format!(
            "possible here: this host has {total} MiB of RAM, so a guest can have at most {most}"
        ));
    }
    if mib > total / 2 {
        return Ok(vec![format!(
            "vm.memory_mib = {mib} is more than half of this host's {total} MiB; \
             two VMs at once would not fit"
        )]);
    }
    Ok(Vec::new())
}

fn cores() -> Option<i64> {
    std::thread::available_parallelism()
        .ok()
        .map(|n| n.get() as i64)
}

/// `MemTotal` of `/proc/meminfo`, in MiB.
fn total_mib() -> Option<i64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: i64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Checks a VM shape asked for outside the settings (`capsem create
/// --cpus N --memory MIB`) as `settings set` would check `vm.cpus` and
/// `vm.memory_mib`: within their range and within this host.
pub fn check_vm_shape(cpus: u32, memory_mib: u32) -> Result<(), String> {
    for (key, n) in [("vm.cpus", cpus), ("vm.memory_mib", memory_mib)] {
        let n = i64::from(n);
        if let Some(super::registry::Def {
            kind: super::registry::Kind::Int { min, max },
            ..
        }) = super::registry::lookup(key)
            && !(*min..=*max).contains(&n)
        {
            return Err(format!("{key} = {n} is not between {min} and {max}"));
        }
        fits(key, &toml_edit::Value::from(n)).map_err(|why| format!("{key} = {n} is not {why}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_cpus_than_cores_are_refused() {
        assert!(cpus(2, Some(2)).unwrap().is_empty());
        let why = cpus(64, Some(2)).unwrap_err();
        assert!(why.contains("this host has 2 CPUs"), "{why}");
        assert!(
            cpus(64, None).is_ok(),
            "an unknown host is not second-guessed"
        );
    }

    #[test]
    fn memory_must_leave_the_host_room_and_half_is_a_warning() {
        assert!(memory(1024, Some(24_000)).unwrap().is_empty());
        assert_eq!(memory(16_000, Some(24_000)).unwrap().len(), 1);
        let why = memory(65_536, Some(24_000)).unwrap_err();
        assert!(why.contains("at most 23488"), "{why}");
    }

    #[test]
    fn this_host_is_read() {
        assert!(cores().is_some_and(|n| n >= 1));
        assert!(total_mib().is_some_and(|n| n > 0));
    }
}
