//! A one-line progress bar on stderr for the passes' long loops (calibration
//! samples, variant models).

use std::io::Write;
use std::sync::Mutex;

/// A one-line progress bar on stderr, drawn only on a terminal.
pub struct Progress {
    on: bool,
    total: usize,
    what: &'static str,
    drawn: Mutex<usize>,
}

impl Progress {
    /// A bar for `total` steps of `what`; `on` false draws nothing.
    pub fn new(on: bool, total: usize, what: &'static str) -> Progress {
        Progress {
            on,
            total,
            what,
            drawn: Mutex::new(0),
        }
    }

    /// `done` steps are finished.
    pub fn tick(&self, done: usize) {
        if !self.on {
            return;
        }
        let mut drawn = self.drawn.lock().unwrap_or_else(|e| e.into_inner());
        if done <= *drawn {
            return;
        }
        *drawn = done;
        let width = 30;
        let filled = done * width / self.total.max(1);
        eprint!(
            "\r  {} [{}{}] {done}/{}",
            self.what,
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.total
        );
        let _ = std::io::stderr().flush();
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if self.on {
            eprint!("\r{}\r", " ".repeat(80));
            let _ = std::io::stderr().flush();
        }
    }
}
