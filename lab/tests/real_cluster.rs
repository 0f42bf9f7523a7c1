//! `secret-canary-lab up --cluster real`: the real control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler) built from the
//! pinned Go modules by `scripts/build-real.sh`, checked with the real kubectl.
//!
//! Needs the built binaries in the cache. Without them each test says SKIP
//! loudly and passes, unless `SECRET_CANARY_REQUIRE_REAL` is set
//! (scripts/test.sh sets it once the build succeeded): then it fails.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use secret_canary_lab::real::bins::{self, Binaries, Binary};
use secret_canary_lab::real::lab::RealLabInfo;

const LAB: &str = env!("CARGO_BIN_EXE_secret-canary-lab");

/// The binaries, or `None` (with a loud SKIP) when they are not built.
fn real_binaries() -> Option<Binaries> {
    bins::pinned_or_skip("real cluster", &[Binary::Kubectl])
}

fn temp_dir(tag: &str) -> PathBuf {
    let n: u64 = rand::random();
    let d = std::env::temp_dir().join(format!("secret-canary-real-{tag}-{n:016x}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A lab process that is stopped (SIGTERM) when dropped.
struct LabProc {
    child: Child,
    dir: PathBuf,
}

impl LabProc {
    fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> LabProc {
        let mut cmd = Command::new(LAB);
        cmd.args(["up", "--cluster", "real", "--control-plane-only", "--dir"])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("lab.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("lab.err")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        LabProc {
            child: cmd.spawn().unwrap(),
            dir: dir.to_path_buf(),
        }
    }

    fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("lab.err")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Wait for `lab.json` (written when everything is ready).
    fn wait_ready(&mut self, limit: Duration) -> RealLabInfo {
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(self.dir.join("lab.json")) {
                if let Ok(info) = serde_json::from_str::<RealLabInfo>(&text) {
                    return info;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the lab exited ({status}) before it was ready:\n{}",
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < limit,
                "the real cluster was not ready within {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then wait (bounded) for the exit.
    fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        // SAFETY: kill(2) with plain integers on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "the lab did not stop within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the exit (the lab is expected to fail on its own).
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "the lab did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LabProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as above.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let _ = self.child.wait();
        }
    }
}

fn kubectl(b: &Binaries, kubeconfig: &str, args: &[&str]) -> Output {
    Command::new(b.path(Binary::Kubectl))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn missing_binaries_name_the_build_script() {
    let dir = temp_dir("missing");
    let cache = dir.join("empty-cache");
    let mut lab = LabProc::start(
        &dir,
        &[],
        &[("SECRET_CANARY_CACHE", cache.to_str().unwrap())],
    );
    let status = lab.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let err = lab.stderr();
    assert!(
        err.contains("scripts/build-real.sh") && err.contains("not built"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn real_control_plane_with_rbac_and_audit() {
    let Some(b) = real_binaries() else { return };

    // A port in use is an error naming the component, and nothing is left running.
    {
        let dir = temp_dir("port");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port().to_string();
        let mut lab = LabProc::start(&dir, &["--api-port", &port], &[]);
        assert!(!lab.wait_exit(Duration::from_secs(30)).success());
        let err = lab.stderr();
        assert!(
            err.contains("kube-apiserver") && err.contains(&port) && err.contains("in use"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    let dir = temp_dir("up");
    let started = Instant::now();
    let mut lab = LabProc::start(&dir, &[], &[]);
    let info = lab.wait_ready(Duration::from_secs(180));
    eprintln!(
        "real control plane ready in {:.1} s (lab.json after {:.1} s)",
        info.ready_ms as f64 / 1000.0,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(info.cluster, "real");
    for f in ["kubeconfig", "vault.env", "truth.jsonl", "lab.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let names: Vec<&str> = info.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler"
        ]
    );
    let kc = info.kubeconfig.as_str();

    // Ready, and the version is the pinned one (stamped by the build).
    let readyz = ok(
        &kubectl(&b, kc, &["get", "--raw", "/readyz"]),
        "get --raw /readyz",
    );
    assert_eq!(readyz.trim(), "ok");
    let version = ok(
        &kubectl(&b, kc, &["version", "-o", "json"]),
        "kubectl version",
    );
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(
        version["serverVersion"]["gitVersion"].as_str(),
        Some(b.versions.kubernetes.as_str()),
        "{version}"
    );

    // RBAC: the admin may do anything; a fresh ServiceAccount may not read Secrets.
    ok(
        &kubectl(
            &b,
            kc,
            &["create", "serviceaccount", "nobody", "-n", "default"],
        ),
        "create serviceaccount",
    );
    let admin = kubectl(
        &b,
        kc,
        &["auth", "can-i", "get", "secrets", "-n", "default"],
    );
    assert_eq!(String::from_utf8_lossy(&admin.stdout).trim(), "yes");
    let nobody = kubectl(
        &b,
        kc,
        &[
            "auth",
            "can-i",
            "get",
            "secrets",
            "-n",
            "default",
            "--as=system:serviceaccount:default:nobody",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&nobody.stdout).trim(),
        "no",
        "{}",
        String::from_utf8_lossy(&nobody.stderr)
    );
    assert!(!nobody.status.success());

    // The audit log: Secrets at Metadata level, never their data; the
    // stage writes (a Deployment here) with their bodies.
    let n: u64 = rand::random();
    let value = format!("audit-canary-{n:016x}");
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&value)
    };
    ok(
        &kubectl(
            &b,
            kc,
            &[
                "create",
                "secret",
                "generic",
                "audited",
                "-n",
                "default",
                &format!("--from-literal=value={value}"),
            ],
        ),
        "create secret",
    );
    ok(
        &kubectl(
            &b,
            kc,
            &["get", "secret", "audited", "-n", "default", "-o", "name"],
        ),
        "get secret",
    );
    ok(
        &kubectl(
            &b,
            kc,
            &[
                "create",
                "deployment",
                "audited",
                "-n",
                "default",
                "--image=example.invalid/none",
            ],
        ),
        "create deployment",
    );
    let audit = std::fs::read_to_string(&info.audit_log).expect("the audit log exists");
    assert!(
        !audit.contains(&value) && !audit.contains(&b64),
        "the audit log holds the Secret's data"
    );
    let events: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect();
    let about = |resource: &str, verb: &str| {
        events
            .iter()
            .filter(|e| {
                e["objectRef"]["resource"] == resource
                    && e["objectRef"]["name"] == "audited"
                    && e["verb"] == verb
                    && e["stage"] == "ResponseComplete"
            })
            .collect::<Vec<_>>()
    };
    let secret_writes = about("secrets", "create");
    assert_eq!(
        secret_writes.len(),
        1,
        "one audit event for the Secret's create"
    );
    for e in secret_writes.iter().chain(about("secrets", "get").iter()) {
        assert_eq!(e["level"], "Metadata", "{e}");
        assert!(e.get("requestObject").is_none() && e.get("responseObject").is_none());
    }
    assert!(
        !about("secrets", "get").is_empty(),
        "the Secret's read is audited"
    );
    let deploy = about("deployments", "create");
    assert_eq!(deploy.len(), 1);
    assert_eq!(deploy[0]["level"], "RequestResponse");
    assert!(deploy[0]["responseObject"]["spec"]["template"].is_object());
    // Everything else is not recorded (level None): ServiceAccounts themselves
    // (their token requests are, at Metadata level).
    assert!(!events
        .iter()
        .any(|e| e["objectRef"]["resource"] == "serviceaccounts"
            && e["objectRef"].get("subresource").is_none()));

    // `fault`, `knob` and `status` through the CLI: an unsupported name is a
    // clear error listing what is supported; a fault whose component this
    // lab does not run says so; `apiserver-down` stops kube-apiserver and
    // starts it again with the same flags (the lab stays up).
    let cli = |args: &[&str]| {
        Command::new(LAB)
            .args(args)
            .args(["--dir", dir.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let supported = secret_canary_lab::real::faults::SUPPORTED;
    for args in [
        &["fault", "eso-stall", "on"][..],
        &["knob", "eso-latency", "1s"][..],
    ] {
        let o = cli(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            supported.iter().all(|n| err.contains(n)) && err.contains("--cluster real"),
            "{args:?}: {err}"
        );
    }
    let o = cli(&["fault", "eso-stop", "on"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("external-secrets") && err.contains("not running"),
        "{err}"
    );
    let o = cli(&["status"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("apiserver-down"),
        "{out}"
    );
    let down = Instant::now();
    let o = cli(&["fault", "apiserver-down", "on"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !kubectl(&b, kc, &["get", "--raw", "/readyz", "--request-timeout=2s"])
            .status
            .success()
    );
    let o = cli(&["fault", "apiserver-down", "off"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!(
        "kube-apiserver down and up again in {:.1} s",
        down.elapsed().as_secs_f64()
    );
    let readyz = ok(
        &kubectl(&b, kc, &["get", "--raw", "/readyz"]),
        "get --raw /readyz after the restart",
    );
    let after: RealLabInfo =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json")).unwrap()).unwrap();
    let pid = |i: &RealLabInfo| {
        i.components
            .iter()
            .find(|c| c.name == "kube-apiserver")
            .map(|c| c.pid)
    };
    assert_ne!(pid(&after), pid(&info), "lab.json keeps the old pid");
    assert!(alive(pid(&after).unwrap()));
    assert_eq!(readyz.trim(), "ok");
    assert!(lab.child.try_wait().unwrap().is_none(), "the lab exited");

    // SIGTERM stops every component.
    let status = lab.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status}: {}", lab.stderr());
    // lab.json follows kube-apiserver's restart (its new pid).
    let info: RealLabInfo =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json")).unwrap()).unwrap();
    for c in &info.components {
        assert!(!alive(c.pid), "{} (pid {}) still runs", c.name, c.pid);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
