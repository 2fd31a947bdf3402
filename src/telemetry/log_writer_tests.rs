use std::{
    io::Write as _,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use super::*;

/// "A write has started" out, "go on" in.
type Gate = Arc<Mutex<(mpsc::Sender<()>, mpsc::Receiver<()>)>>;

/// A sink the test can read back, and hold shut: each write says it has
/// started, then waits until the test lets it through (or stops holding).
#[derive(Clone)]
struct Sink {
    written: Arc<Mutex<Vec<u8>>>,
    gate: Option<Gate>,
}

impl Sink {
    fn open() -> Self {
        Self {
            written: Arc::default(),
            gate: None,
        }
    }

    /// A sink whose writes wait; returns it, "a write has started", and
    /// the key that lets writes through (dropped, it lets all through).
    fn held() -> (Self, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let sink = Self {
            written: Arc::default(),
            gate: Some(Arc::new(Mutex::new((started_tx, release_rx)))),
        };
        (sink, started_rx, release_tx)
    }

    fn text(&self) -> String {
        String::from_utf8(self.written.lock().unwrap().clone()).unwrap()
    }
}

impl io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if let Some(gate) = &self.gate {
            let gate = gate.lock().unwrap();
            let _ = gate.0.send(());
            let _ = gate.1.recv();
        }
        self.written.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn line(mut writer: &LogWriter<Sink>, text: &str) {
    writer.write_all(text.as_bytes()).unwrap();
}

#[test]
fn every_line_reaches_the_sink_whole_and_in_order_by_close() {
    let sink = Sink::open();
    let (writer, guard) = spawn(sink.clone(), 1 << 16);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    line(&writer, &format!("thread {t} line {i}\n"));
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    guard.close();

    let text = sink.text();
    assert_eq!(text.lines().count(), 2000);
    for t in 0..4 {
        let own: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(&format!("thread {t} ")))
            .map(str::to_owned)
            .collect();
        let expected: Vec<String> = (0..500).map(|i| format!("thread {t} line {i}")).collect();
        assert_eq!(own, expected, "thread {t}'s lines, whole and in order");
    }
}

#[test]
fn a_full_buffer_drops_and_counts_lines_instead_of_waiting_for_the_sink() {
    let (sink, started, release) = Sink::held();
    let (writer, guard) = spawn(sink.clone(), 100);
    // Declared after the guard, so a failing assertion lets the sink go
    // before the guard waits for the writer.
    let release = release;
    line(&writer, "first 789\n");
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("the writer took the first line to the sink");

    // The sink is held shut: 10 lines of 10 bytes fill the buffer, 5 more
    // do not fit. Writing them all must still return at once.
    let writing = {
        let writer = writer.clone();
        std::thread::spawn(move || {
            for i in 0..15 {
                line(&writer, &format!("line {i:04}\n"));
            }
        })
    };
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || done_tx.send(writing.join()).unwrap());
    done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no write waits for a held sink")
        .unwrap();
    assert_eq!(writer.dropped_lines(), 5);

    drop(release);
    guard.close();
    let expected: String = std::iter::once("first 789\n".to_string())
        .chain((0..10).map(|i| format!("line {i:04}\n")))
        .collect();
    assert_eq!(sink.text(), expected, "the lines that fit, whole");
}

#[test]
fn lines_after_close_are_written_directly() {
    let sink = Sink::open();
    let (writer, guard) = spawn(sink.clone(), 1 << 10);
    line(&writer, "before\n");
    guard.close();
    line(&writer, "after\n");
    assert_eq!(sink.text(), "before\nafter\n");
}
