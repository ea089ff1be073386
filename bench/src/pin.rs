//! CPU pinning: `--pin CPU` for the measuring threads and `--pin-bus CPU` for the bus under
//! test.
//!
//! On a machine with few CPUs the round trip of an unpinned run depends on where the
//! scheduler happens to put the client, the echo service and the bus (two threads on one CPU
//! hand over without an IPI; on two CPUs each hop wakes an idle CPU), so rounds come out
//! bimodal. Pinning everything to one CPU removes that choice: every hop is a plain task
//! switch, and what is left is the work each process does per hop.

use std::io;

/// Restricts the calling thread to `cpu`. Threads it spawns afterwards inherit the mask
/// (Linux copies a thread's affinity to the threads and processes it creates), so calling this
/// first in `main` pins the client, the echo service and every helper thread of a scenario.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    set_current(&cpu_set(cpu)?).map_err(|e| io::Error::new(e.kind(), format!("CPU {cpu}: {e}")))
}

/// Sets the calling thread's CPUs to `set`.
fn set_current(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid, initialised cpu_set_t of the size passed; pid 0 = this thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's CPU set.
fn current_set() -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable and of the size passed; pid 0 = this thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

/// Runs `f` (which starts a bus) with the calling thread pinned to `cpu`, then restores the
/// thread's previous CPUs. A process inherits its parent's affinity at fork, and so does every
/// process it forks later (for dbus-broker: the launcher, then the broker), as with
/// `taskset -c CPU`.
pub fn with_cpu<T>(cpu: usize, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let before = current_set()?;
    pin_current_thread(cpu)?;
    let result = f();
    set_current(&before)?;
    result
}

/// The CPU set holding only `cpu`; an error for a CPU number the set cannot hold.
fn cpu_set(cpu: usize) -> io::Result<libc::cpu_set_t> {
    // CPU_SETSIZE bits.
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} out of range"),
        ));
    }
    // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    Ok(set)
}

/// The CPUs the calling thread may run on.
#[cfg(test)]
pub fn current_cpus() -> io::Result<Vec<usize>> {
    let set = current_set()?;
    let bits = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `i` < CPU_SETSIZE.
    Ok((0..bits)
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_thread_and_its_children_run_on_that_cpu_only() {
        // In a thread of its own, so the test harness's other threads stay unpinned.
        let cpu = current_cpus().unwrap()[0];
        std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            assert_eq!(current_cpus().unwrap(), vec![cpu]);
            let inner = std::thread::spawn(current_cpus).join().unwrap().unwrap();
            assert_eq!(inner, vec![cpu], "a spawned thread inherits the pin");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_process_started_with_cpu_is_pinned_and_the_caller_is_restored() {
        std::thread::spawn(|| {
            let before = current_cpus().unwrap();
            let cpu = *before.last().unwrap();
            let out = with_cpu(cpu, || {
                std::process::Command::new("sh")
                    .args(["-c", "grep Cpus_allowed_list /proc/self/status"])
                    .output()
            })
            .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                text.split_whitespace().nth(1),
                Some(cpu.to_string().as_str()),
                "{text}"
            );
            assert_eq!(current_cpus().unwrap(), before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn out_of_range_cpu_is_an_error() {
        assert!(pin_current_thread(1 << 20).is_err());
        assert!(with_cpu(1 << 20, || Ok(())).is_err());
    }
}
