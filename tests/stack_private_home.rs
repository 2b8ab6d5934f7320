//! `scripts/stack` run by root from a clone under a directory the `postgres` user cannot
//! traverse, as a root home of mode 0700 is: the PostgreSQL cluster (which belongs to
//! `postgres`) must start all the same, every command must find it, `reset` must delete it,
//! and the directory's permissions must stay as they were.

mod common;

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A stack of the test's own: its stack dir inside a directory of mode 0700, its own ports.
/// Dropped, it runs `scripts/stack reset` and removes the directory, also after a failure.
struct PrivateStack {
    private: PathBuf,
    stack_dir: PathBuf,
    pg_port: u16,
    env: Vec<(&'static str, String)>,
}

impl PrivateStack {
    fn new() -> PrivateStack {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let private = std::env::temp_dir().join(format!("pulsewatch-private-{}", &id[..8]));
        std::fs::DirBuilder::new().mode(0o700).create(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let stack_dir = private.join("pulsewatch/.stack");
        let pg_port = common::free_port();
        let env = vec![
            ("PULSEWATCH_STACK_DIR", stack_dir.display().to_string()),
            ("PG_PORT", pg_port.to_string()),
            ("KAFKA_PORT", common::free_port().to_string()),
            ("KAFKA_CONTROLLER_PORT", common::free_port().to_string()),
        ];
        PrivateStack { private, stack_dir, pg_port, env }
    }

    fn run(&self, action: &str) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stack");
        Command::new("bash")
            .arg(script)
            .arg(action)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.private)
            .output()
            .unwrap()
    }

    /// Runs `scripts/stack ACTION`, checks it succeeded, returns its stdout and its log (stderr).
    fn ok(&self, action: &str) -> (String, String) {
        let out = self.run(action);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "scripts/stack {action}: {}\n{stdout}{stderr}", out.status);
        (stdout, stderr)
    }

    /// Where `scripts/stack` put the cluster, as it recorded it.
    fn location(&self) -> PathBuf {
        let file = self.stack_dir.join("postgres/data-location");
        let recorded = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{} is not readable: {e}", file.display()));
        PathBuf::from(recorded.trim())
    }

    fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-qtAX", "-h", "127.0.0.1", "-U", "postgres", "-d", "pulsewatch", "-p"])
            .arg(self.pg_port.to_string())
            .args(["-c", sql])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql -c {sql:?}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        let out = self.run("reset");
        if !out.status.success() {
            eprintln!("scripts/stack reset: {}\n{}", out.status, text(&out.stderr));
        }
        let _ = std::fs::remove_dir_all(&self.private);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether the `postgres` user can search directory `dir` (and every directory above it).
fn postgres_can_traverse(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .current_dir("/")
        .status()
        .expect("runuser runs")
        .success()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn postgres_runs_from_a_stack_dir_it_cannot_reach() {
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("skipped: only as root does the cluster belong to another user (`postgres`)");
        return;
    }
    let stack = PrivateStack::new();
    assert!(
        !postgres_can_traverse(&stack.private),
        "the postgres user can traverse {}: the test needs a directory closed to it",
        stack.private.display()
    );

    // `start-postgres` is the PostgreSQL half of `up` (Kafka runs as root, so it is unaffected).
    let (_, log) = stack.ok("start-postgres");
    let location = stack.location();
    assert!(log.contains("cannot reach") && log.contains(&location.display().to_string()), "{log}");
    assert!(!location.starts_with(&stack.private), "{} is still out of reach", location.display());
    assert!(location.join("data/PG_VERSION").is_file(), "no cluster in {}", location.display());
    assert_eq!(mode(&location), 0o700, "{}", location.display());
    assert_eq!(std::fs::metadata(&location).unwrap().uid(), owner_uid("postgres"));

    assert_eq!(stack.psql("SHOW data_directory"), location.join("data").display().to_string());
    stack.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)");
    let (status, _) = stack.ok("status");
    assert!(
        status.contains(&format!("postgres: running on 127.0.0.1:{}", stack.pg_port))
            && status.contains(&location.display().to_string()),
        "{status}"
    );

    // `down` stops the cluster and keeps it; `start-postgres` finds the same one again.
    stack.ok("down");
    let (status, _) = stack.ok("status");
    assert!(status.contains("postgres: stopped"), "{status}");
    assert!(location.join("data/PG_VERSION").is_file(), "down keeps the data");
    stack.ok("start-postgres");
    assert_eq!(stack.psql("SELECT x FROM kept"), "7", "the same cluster after a restart");

    // `reset` deletes the cluster where it lives, and the record of where that was.
    stack.ok("reset");
    assert!(!location.exists(), "{} is left after reset", location.display());
    assert!(!stack.stack_dir.join("postgres/data-location").exists());
    let (status, _) = stack.ok("status");
    assert!(status.contains("postgres: stopped"), "{status}");

    // Nothing was opened up to make it work.
    assert_eq!(mode(&stack.private), 0o700);
    assert!(!postgres_can_traverse(&stack.private));
}

fn owner_uid(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    text(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("no user {user}"))
}
