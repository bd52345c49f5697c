//! The process's open-file limit: every device connection the cloud holds is one file
//! descriptor, so the soft limit (often 1,024) is raised to the hard one at start, and the limit
//! in force says how many devices one replica can hold.

/// Raises the soft limit on open files to the hard limit (as far as the system allows) and
/// returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_limit_in_force_is_at_least_the_soft_limit_before() {
        let limit = super::raise_open_file_limit();
        assert!(limit >= 256, "{limit}");
        assert_eq!(
            super::raise_open_file_limit(),
            limit,
            "raising twice changes nothing"
        );
    }
}
