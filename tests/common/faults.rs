//! The fault campaign's rows: each fault test states what it injected, what came out, the
//! requests it counted and the time to recover, and `make faults` (`e2e/faults/run.sh`)
//! collects them into `bench/FAULTS.md`. A row is written only where `OCISYNC_FAULTS_DIR`
//! is set (the campaign); in `make test` the same tests assert the same things and write
//! nothing.

use std::time::Duration;

/// One fault and what it did.
#[derive(Debug, Clone)]
pub struct Row {
    /// `registry`, `control-plane`, `process`, `disk` or `node`.
    pub area: &'static str,
    /// Short name, unique in the campaign (the row's file name).
    pub fault: String,
    /// What was injected, in a sentence.
    pub injected: String,
    /// What came out: reasons seen, what was served meanwhile, how it ended.
    pub outcome: String,
    /// Requests counted while the fault lasted and until recovery (e.g. "manifest GET 4").
    pub requests: String,
    /// From the end of the fault to convergence; `None` where nothing had to recover.
    pub recovered_after: Option<Duration>,
    /// Updates lost (pushed or changed but never applied) and partial revisions seen
    /// served or stored: the tests assert both are 0 before writing the row.
    pub lost: u32,
    pub partial: u32,
}

impl Row {
    pub fn new(area: &'static str, fault: &str) -> Row {
        Row {
            area,
            fault: fault.to_string(),
            injected: String::new(),
            outcome: String::new(),
            requests: String::new(),
            recovered_after: None,
            lost: 0,
            partial: 0,
        }
    }

    pub fn injected(mut self, text: impl Into<String>) -> Row {
        self.injected = text.into();
        self
    }

    pub fn outcome(mut self, text: impl Into<String>) -> Row {
        self.outcome = text.into();
        self
    }

    pub fn requests(mut self, text: impl Into<String>) -> Row {
        self.requests = text.into();
        self
    }

    pub fn recovered_after(mut self, d: Duration) -> Row {
        self.recovered_after = Some(d);
        self
    }

    /// Writes the row to `$OCISYNC_FAULTS_DIR/<area>-<fault>.json` when that is set.
    pub fn record(&self) {
        let Some(dir) = std::env::var_os("OCISYNC_FAULTS_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("create OCISYNC_FAULTS_DIR");
        let name = format!("{}-{}.json", self.area, self.fault.replace('/', "_"));
        let json = serde_json::json!({
            "area": self.area,
            "fault": self.fault,
            "injected": self.injected,
            "outcome": self.outcome,
            "requests": self.requests,
            "recovered_after_s": self.recovered_after.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
            "lost": self.lost,
            "partial": self.partial,
        });
        std::fs::write(dir.join(name), format!("{json}\n")).expect("write a fault row");
    }
}
