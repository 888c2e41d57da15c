//! Helpers of the process-level tests: `serve` processes, a PostgreSQL server of a test's
//! own, and reading their answers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `serve` process, killed on drop.
pub struct Replica {
    pub child: Child,
    pub base: String,
    _dir: TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `serve` process on a free loopback port, with `config` as its default configuration, a
/// data directory of its own, and PostgreSQL when `database` is given.
pub fn serve(
    name: &str,
    wbia: &str,
    database: Option<&str>,
    extra: &[&str],
    config: &str,
) -> Replica {
    serve_with_data(name, wbia, database, extra, config, None)
}

/// As [`serve`], with the data directory (the SQLite store) at `data` when given, which
/// outlives the process.
pub fn serve_with_data(
    name: &str,
    wbia: &str,
    database: Option<&str>,
    extra: &[&str],
    config: &str,
    data: Option<&std::path::Path>,
) -> Replica {
    let dir = TempDir(
        std::env::temp_dir().join(format!("wbia-lg-replica-{name}-{}", std::process::id())),
    );
    std::fs::create_dir_all(dir.0.join("config")).unwrap();
    std::fs::write(dir.0.join("config/config.json"), config).unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_wbia-lightglue"))
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--wbia-url", wbia])
        .args(
            database
                .map(|d| ["--database-url", d])
                .into_iter()
                .flatten(),
        )
        .arg("--config-dir")
        .arg(dir.0.join("config"))
        .arg("--data-dir")
        .arg(data.map_or_else(|| dir.0.join("data"), std::path::Path::to_path_buf))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Replica {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

pub fn fetch(client: &reqwest::blocking::Client, url: &str) -> (u16, String) {
    match client.get(url).send() {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

pub fn json_of(text: &str) -> Value {
    serde_json::from_str(&text.replace("-Infinity", "null")).unwrap()
}

pub fn metric(client: &reqwest::blocking::Client, base: &str, name: &str) -> f64 {
    let (_, text) = fetch(client, &format!("{base}/metrics"));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

pub fn wait_ready(client: &reqwest::blocking::Client, replicas: &[&Replica]) {
    let started = Instant::now();
    for r in replicas {
        while fetch(client, &format!("{}/health", r.base)).0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{} never ready",
                r.base
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A PostgreSQL server of the test's own (initdb in a temporary folder, as
/// `scripts/postgres.sh` makes one), which the test stops and starts; removed on drop.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    pub fn new(tag: &str) -> Self {
        let pg_ctl = Command::new("sh")
            .args([
                "-c",
                "command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl | tail -1",
            ])
            .output()
            .unwrap();
        let pg_ctl = String::from_utf8(pg_ctl.stdout).unwrap();
        assert!(
            !pg_ctl.trim().is_empty(),
            "PostgreSQL's server programs (pg_ctl, initdb)"
        );
        let bin = PathBuf::from(pg_ctl.trim()).parent().unwrap().to_path_buf();
        let dir = std::env::temp_dir().join(format!("wbia-lg-pg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pg = Self {
            bin,
            dir,
            port: free_port(),
        };
        if pg.as_root() {
            assert!(Command::new("chown")
                .arg("postgres")
                .arg(&pg.dir)
                .status()
                .unwrap()
                .success());
        }
        let initdb = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.dir.join("data"))
            .args(["-U", "postgres", "-A", "trust", "--no-sync"])
            .output()
            .unwrap();
        assert!(initdb.status.success(), "{initdb:?}");
        pg.start();
        pg
    }

    pub fn as_root(&self) -> bool {
        let id = Command::new("id").arg("-u").output().unwrap();
        String::from_utf8_lossy(&id.stdout).trim() == "0"
    }

    /// One of PostgreSQL's programs, as the `postgres` user when we are root (initdb and
    /// the server refuse root).
    pub fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let started = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-o", &options, "start"])
            .output()
            .unwrap();
        assert!(started.status.success(), "{started:?}");
    }

    /// As a crash would: no shutdown checkpoint, connections cut.
    pub fn stop(&self) {
        let stopped = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .unwrap();
        assert!(stopped.status.success(), "{stopped:?}");
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A completed job's scores by database annotation UUID, from its result on `base`, for the
/// query `query` (a UUID string).
pub fn job_scores(
    client: &reqwest::blocking::Client,
    base: &str,
    jobid: &str,
    query: &str,
) -> HashMap<String, f64> {
    let result_url = format!("{base}/api/engine/job/result/?jobid={jobid}");
    let result = json_of(&fetch(client, &result_url).1);
    assert_eq!(result["response"]["status"], "completed", "{result}");
    let cm = &result["response"]["json_result"]["cm_dict"][query];
    cm["dannot_uuid_list"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cm["annot_score_list"].as_array().unwrap())
        .map(|(u, s)| {
            (
                u["__UUID__"].as_str().unwrap().to_string(),
                s.as_f64().unwrap(),
            )
        })
        .collect()
}
