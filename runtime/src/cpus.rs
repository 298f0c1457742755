//! CPU lists as Linux writes them (`0-7`, `0,2,4`, `1-3,6`): parsed, validated, and checked
//! against the CPUs this process may run on.

use std::{fmt, str::FromStr};

/// Largest CPU number accepted; Linux's `CONFIG_NR_CPUS` maximum.
const MAX_CPU: usize = 8191;

/// A non-empty, sorted set of CPU numbers without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

/// Why a CPU list was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// The list has no CPU in it.
    #[error("empty CPU list (expected e.g. `0-7`, `0,2,4` or `1-3,6`)")]
    Empty,
    /// An item is neither a number nor a `A-B` range.
    #[error("`{item}` in CPU list is not a CPU number or range (expected e.g. `3` or `0-7`)")]
    BadItem {
        /// The item as written.
        item: String,
    },
    /// A range `A-B` with `B < A`.
    #[error("range `{item}` in CPU list runs backwards")]
    Backwards {
        /// The range as written.
        item: String,
    },
    /// A CPU appears twice.
    #[error("CPU {cpu} is listed more than once")]
    Duplicate {
        /// The CPU number.
        cpu: usize,
    },
    /// A CPU number above what Linux supports.
    #[error("CPU {cpu} is beyond the largest CPU number Linux supports ({MAX_CPU})")]
    TooLarge {
        /// The CPU number.
        cpu: usize,
    },
    /// A CPU outside this process's affinity mask (taken offline, or excluded by a cgroup or
    /// `taskset`).
    #[error("CPU {cpu} is not available to this process (available: {available})")]
    Unavailable {
        /// The CPU number.
        cpu: usize,
        /// The CPUs this process may run on.
        available: CpuList,
    },
    /// `sched_getaffinity` failed.
    #[error("cannot read this process's CPU affinity: {0}")]
    Affinity(String),
}

impl CpuList {
    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// How many CPUs are listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a `CpuList` is never empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The CPUs this process may run on (its affinity mask).
    pub fn available() -> Result<CpuList, CpuListError> {
        let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .map_err(|e| CpuListError::Affinity(e.to_string()))?;
        let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect();
        if cpus.is_empty() {
            return Err(CpuListError::Affinity("empty affinity mask".into()));
        }
        Ok(CpuList(cpus))
    }

    /// Parses the CPU list `text` and checks that this process may run on every CPU in it.
    pub fn parse_available(text: &str) -> Result<CpuList, CpuListError> {
        let list: CpuList = text.parse()?;
        list.check_within(&CpuList::available()?)?;
        Ok(list)
    }

    /// Checks that every listed CPU is in `available`.
    pub fn check_within(&self, available: &CpuList) -> Result<(), CpuListError> {
        match self
            .0
            .iter()
            .find(|cpu| available.0.binary_search(cpu).is_err())
        {
            Some(&cpu) => Err(CpuListError::Unavailable {
                cpu,
                available: available.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl FromStr for CpuList {
    type Err = CpuListError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CpuListError::Empty);
        }
        let number = |item: &str, part: &str| -> Result<usize, CpuListError> {
            let bad = || CpuListError::BadItem {
                item: item.to_owned(),
            };
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let cpu: usize = part.parse().map_err(|_| bad())?;
            if cpu > MAX_CPU {
                return Err(CpuListError::TooLarge { cpu });
            }
            Ok(cpu)
        };
        let mut cpus = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (number(item, a.trim())?, number(item, b.trim())?),
                None => {
                    let cpu = number(item, item)?;
                    (cpu, cpu)
                }
            };
            if last < first {
                return Err(CpuListError::Backwards {
                    item: item.to_owned(),
                });
            }
            cpus.extend(first..=last);
        }
        cpus.sort_unstable();
        if let Some(pair) = cpus.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(CpuListError::Duplicate { cpu: pair[0] });
        }
        Ok(CpuList(cpus))
    }
}

/// Writes the list back in Linux's compact form (`0-3,6`).
impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        let mut first = true;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<usize>, CpuListError> {
        text.parse::<CpuList>().map(|list| list.0)
    }

    #[test]
    fn accepts_the_linux_forms() {
        assert_eq!(parse("0-7").unwrap(), (0..8).collect::<Vec<_>>());
        assert_eq!(parse("0,2,4").unwrap(), vec![0, 2, 4]);
        assert_eq!(parse("1-3,6").unwrap(), vec![1, 2, 3, 6]);
        assert_eq!(parse("5").unwrap(), vec![5]);
        assert_eq!(parse(" 6, 1-2 ").unwrap(), vec![1, 2, 6]);
        assert_eq!(parse("3-3").unwrap(), vec![3]);
    }

    #[test]
    fn rejects_bad_lists_with_the_reason() {
        assert_eq!(parse(""), Err(CpuListError::Empty));
        assert_eq!(parse("  "), Err(CpuListError::Empty));
        for bad in [
            "a", "1,", ",1", "1-", "-1", "1--2", "1-2-3", "+1", "0x1", "1.5",
        ] {
            assert!(
                matches!(parse(bad), Err(CpuListError::BadItem { .. })),
                "{bad:?} gave {:?}",
                parse(bad)
            );
        }
        assert_eq!(
            parse("7-3"),
            Err(CpuListError::Backwards { item: "7-3".into() })
        );
        assert_eq!(parse("1,0-2"), Err(CpuListError::Duplicate { cpu: 1 }));
        assert_eq!(parse("9000"), Err(CpuListError::TooLarge { cpu: 9000 }));
        assert_eq!(
            parse("99999999999999999999999"),
            Err(CpuListError::BadItem {
                item: "99999999999999999999999".into()
            })
        );
    }

    #[test]
    fn error_text_names_the_problem() {
        let err = parse("0,x").unwrap_err().to_string();
        assert!(err.contains("`x`"), "{err}");
    }

    #[test]
    fn displays_compactly() {
        for text in ["0-7", "0,2,4", "1-3,6", "0", "0-1,3-4,9"] {
            assert_eq!(text.parse::<CpuList>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn a_list_parsed_for_this_process_is_checked_against_its_cpus() {
        let available = CpuList::available().unwrap();
        assert_eq!(
            CpuList::parse_available(&available.to_string()).unwrap(),
            available
        );
        assert!(matches!(
            CpuList::parse_available("0,x"),
            Err(CpuListError::BadItem { .. })
        ));
        let beyond = available.cpus()[available.len() - 1] + 1;
        assert!(matches!(
            CpuList::parse_available(&beyond.to_string()),
            Err(CpuListError::Unavailable { cpu, .. }) if cpu == beyond
        ));
    }

    #[test]
    fn availability_check() {
        let available: CpuList = "0-1".parse().unwrap();
        assert!("0,1"
            .parse::<CpuList>()
            .unwrap()
            .check_within(&available)
            .is_ok());
        let err = "0-7"
            .parse::<CpuList>()
            .unwrap()
            .check_within(&available)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "CPU 2 is not available to this process (available: 0-1)"
        );
        assert!(!CpuList::available().unwrap().is_empty());
    }
}
