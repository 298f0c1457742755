//! Fuzz entry points for what this crate parses itself (the rest is in `fastedge_wire::fuzzing`),
//! called by the three-line targets in `fuzz/`.

use crate::pipeline::PipelineConfig;

/// Pipeline TOML: parsing and checking never panics; an accepted pipeline names itself, counts
/// its ways (at most `MAX_WAYS`) and sizes its rings without overflow, and written back as TOML
/// reads as the same pipeline.
pub fn pipeline_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = PipelineConfig::from_toml(text) else {
        return;
    };
    let _ = config.name();
    let ways = config.way_count();
    // What building it computes from these must not overflow.
    assert!(ways <= crate::pipeline::MAX_WAYS);
    assert!(config.way_kib.checked_mul(1024).is_some());
    let again = match toml::to_string(&config) {
        Ok(again) => again,
        Err(e) => panic!("an accepted pipeline does not write back as TOML: {e}"),
    };
    match PipelineConfig::from_toml(&again) {
        Ok(back) => {
            assert_eq!(back.way_count(), ways);
            assert_eq!(format!("{back:?}"), format!("{config:?}"));
        }
        Err(e) => panic!("the pipeline written back does not read ({e}):\n{again}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fuzz_entry_points_accept_samples() {
        for sample in [
            &b""[..],
            b"[[input]]\ninterface = \"eth1\"\n[output]\ntype = \"balance\"\nways = 4\n",
            b"[[input]]\npcap = \"a.pcap\"\n[output]\ntype = \"dup\"\n[[output.to]]\ntype = \"way\"\n",
        ] {
            super::pipeline_toml(sample);
        }
    }
}
