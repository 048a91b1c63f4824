//! `deploy/Dockerfile`: it builds the workspace from everything the manifest needs and
//! runs the binary unprivileged, with the volume, the two ports (client and peer) and the
//! health check the rest of `deploy/` expects; and its user, volume and listeners are the
//! StatefulSet's.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::files::{
    binds_all_interfaces, deploy_dir, objects_of, peer_listen, port_of, read, root, Check, Env,
    Problems,
};
use crate::kubernetes::pod_environment;

/// The text of `deploy/Dockerfile`.
pub(crate) fn dockerfile_text() -> String {
    read(&deploy_dir().join("Dockerfile"))
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Stage {
    image: String,
    alias: Option<String>,
    /// `(INSTRUCTION, arguments)`, continuation lines joined, comments dropped.
    instructions: Vec<(String, String)>,
}

pub(crate) fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(body) => {
                cur.push_str(body.trim());
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                logical.push(std::mem::take(&mut cur));
            }
        }
    }
    if !cur.is_empty() {
        logical.push(cur);
    }
    let mut stages: Vec<Stage> = Vec::new();
    for l in logical {
        let (instr, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let instr = instr.to_ascii_uppercase();
        let args = args.trim().to_string();
        if instr == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let alias = match words.as_slice() {
                [_, as_, alias] if as_.eq_ignore_ascii_case("as") => Some(alias.to_string()),
                _ => None,
            };
            stages.push(Stage {
                image: words.first().unwrap_or(&"").to_string(),
                alias,
                instructions: Vec::new(),
            });
        } else if let Some(st) = stages.last_mut() {
            st.instructions.push((instr, args));
        }
    }
    stages
}

impl Stage {
    fn all(&self, instr: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(i, _)| i == instr)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    /// `ENV` of this stage (`K=V ...` or the legacy `K V`).
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for args in self.all("ENV") {
            let words: Vec<&str> = args.split_whitespace().collect();
            if words.first().is_some_and(|w| w.contains('=')) {
                for w in words {
                    if let Some((k, v)) = w.split_once('=') {
                        env.insert(k.to_string(), v.trim_matches('"').to_string());
                    }
                }
            } else if let Some((k, v)) = args.split_once(char::is_whitespace) {
                env.insert(k.to_string(), v.trim().trim_matches('"').to_string());
            }
        }
        env
    }

    /// `COPY` instructions as `(flags, sources, destination)`.
    fn copies(&self) -> Vec<(Vec<String>, Vec<String>, String)> {
        self.all("COPY")
            .into_iter()
            .filter_map(|args| {
                let (flags, rest): (Vec<&str>, Vec<&str>) =
                    args.split_whitespace().partition(|w| w.starts_with("--"));
                let (dest, srcs) = rest.split_last()?;
                Some((
                    flags.iter().map(|f| f.to_string()).collect(),
                    srcs.iter()
                        .map(|s| s.trim_start_matches("./").trim_end_matches('/').to_string())
                        .collect(),
                    dest.to_string(),
                ))
            })
            .collect()
    }
}

/// A JSON-array (exec form) argument, e.g. of `ENTRYPOINT` or `HEALTHCHECK ... CMD`.
pub(crate) fn exec_form(args: &str) -> Option<Vec<String>> {
    serde_json::from_str(args.trim()).ok()
}

pub(crate) fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// `.dockerignore` patterns, as plain paths (globs are left out).
pub(crate) fn dockerignore(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

/// The Dockerfile builds the workspace from everything its manifest needs, with a Rust at
/// least the manifest's rust-version, and runs the binary as an unprivileged user with the
/// data volume, ports and health check the rest of `deploy/` expects.
pub(crate) fn check_dockerfile(text: &str, ignore: &str, repo: &Path) -> Check {
    let mut p = Problems::default();
    let stages = dockerfile_stages(text);
    if stages.len() < 2 {
        return Err(format!(
            "Dockerfile: expected a builder and a runtime stage, found {}",
            stages.len()
        ));
    }
    let builder = &stages[0];
    let runtime = stages.last().unwrap();
    let manifest: toml::Table =
        toml::from_str(&read(&repo.join("Cargo.toml"))).expect("Cargo.toml");

    // The toolchain.
    let want = manifest["workspace"]["package"]["rust-version"]
        .as_str()
        .and_then(parse_version);
    let have = builder
        .image
        .strip_prefix("rust:")
        .and_then(|tag| parse_version(tag.split('-').next().unwrap_or("")));
    p.check(have.is_some() && have >= want, || {
        format!(
            "builder image {} is older than the manifest's rust-version {want:?}",
            builder.image
        )
    });
    p.check(runtime.image == "debian:bookworm-slim", || {
        format!(
            "runtime image {} (want debian:bookworm-slim, the builder's Debian)",
            runtime.image
        )
    });

    // The sources: everything cargo needs to resolve the workspace, present and not ignored.
    let ignored = dockerignore(ignore);
    for want in ["target", ".git", "run", "results"] {
        p.check(ignored.iter().any(|i| i == want), || {
            format!(".dockerignore does not exclude {want}")
        });
    }
    let copied: Vec<String> = builder
        .copies()
        .into_iter()
        .flat_map(|(_, s, _)| s)
        .collect();
    for src in &copied {
        p.check(repo.join(src).exists(), || {
            format!("Dockerfile copies {src}, which does not exist")
        });
        p.check(
            !ignored
                .iter()
                .any(|i| src == i || src.starts_with(&format!("{i}/"))),
            || format!("Dockerfile copies {src}, which .dockerignore excludes"),
        );
    }
    let covered = |path: &str| {
        copied
            .iter()
            .any(|c| path == c || path.starts_with(&format!("{c}/")))
    };
    let mut needed: Vec<String> = vec![
        "Cargo.toml".into(),
        "Cargo.lock".into(),
        "src/main.rs".into(),
    ];
    for m in manifest["workspace"]["members"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let m = m.as_str().unwrap_or(".");
        if m != "." {
            needed.push(format!("{m}/Cargo.toml"));
            needed.push(format!("{m}/src"));
        }
    }
    for kind in ["bench", "test", "bin", "example"] {
        for t in manifest
            .get(kind)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let path = match t.get("path").and_then(|v| v.as_str()) {
                Some(path) => path.to_string(),
                None => {
                    let dir = match kind {
                        "bench" => "benches",
                        "test" => "tests",
                        "example" => "examples",
                        _ => "src/bin",
                    };
                    let name = t.get("name").and_then(|v| v.as_str()).unwrap_or("");
                    format!("{dir}/{name}.rs")
                }
            };
            needed.push(path);
        }
    }
    if repo.join("tests").is_dir() {
        needed.push("tests".into());
    }
    // The build script (without it cargo would build no differently, but the crate reads
    // what it sets: the commit of cookie_crud_build_info).
    match manifest["package"].get("build") {
        Some(toml::Value::String(b)) => needed.push(b.clone()),
        Some(toml::Value::Boolean(false)) => {}
        _ if repo.join("build.rs").is_file() => needed.push("build.rs".into()),
        _ => {}
    }
    for n in needed {
        p.check(covered(&n), || {
            format!("Dockerfile does not copy {n}, which the manifest needs")
        });
    }
    // Path dependencies and patches (`[patch.crates-io] openraft = { path = "vendor/..." }`):
    // cargo reads them to resolve the workspace at all.
    for dep in path_dependencies(&manifest) {
        p.check(covered(&dep), || {
            format!("Dockerfile does not copy {dep}, a path dependency or [patch] of Cargo.toml")
        });
    }
    // Files the code compiles in (`include_str!("../../docs/openapi.yaml")`).
    let mut sources = vec!["src".to_string()];
    for m in manifest["workspace"]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str())
        .filter(|m| *m != ".")
    {
        sources.push(format!("{m}/src"));
    }
    for file in included_files(repo, &sources) {
        p.check(covered(&file), || {
            format!("Dockerfile does not copy {file}, which the sources include (include_str!/include_bytes!)")
        });
    }
    let build = builder.all("RUN").join(" ");
    p.check(
        build.contains("cargo build") && build.contains("--release") && build.contains("--locked"),
        || "builder does not run cargo build --release --locked".into(),
    );

    // The runtime image.
    let from_builder = runtime.copies().into_iter().any(|(flags, _, dest)| {
        let alias = builder.alias.clone().unwrap_or_else(|| "0".into());
        flags.contains(&format!("--from={alias}")) && dest == "/usr/local/bin/cookie-crud"
    });
    p.check(from_builder, || {
        "runtime does not copy the binary to /usr/local/bin/cookie-crud".into()
    });
    let entry = runtime.all("ENTRYPOINT").last().and_then(|a| exec_form(a));
    p.check(
        entry.as_deref().is_some_and(|e| {
            e.len() == 1 && (e[0] == "cookie-crud" || e[0] == "/usr/local/bin/cookie-crud")
        }),
        || format!("ENTRYPOINT is {entry:?}, want [\"cookie-crud\"] (exec form)"),
    );
    let health = runtime
        .all("HEALTHCHECK")
        .last()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let cmd = health.split_once("CMD").and_then(|(_, c)| exec_form(c));
    p.check(
        cmd.as_deref().is_some_and(|c| {
            c.len() == 2 && c[0].ends_with("cookie-crud") && c[1] == "healthcheck"
        }),
        || format!("HEALTHCHECK is {health:?}, want CMD [\"cookie-crud\", \"healthcheck\"]"),
    );
    let env = runtime.env();
    check_image_ports(&mut p, runtime, &env);
    let data_dir = env.get("COOKIE_CRUD_DATA_DIR").cloned().unwrap_or_default();
    let volumes: Vec<String> = runtime
        .all("VOLUME")
        .iter()
        .flat_map(|a| {
            exec_form(a).unwrap_or_else(|| a.split_whitespace().map(String::from).collect())
        })
        .collect();
    p.check(!data_dir.is_empty() && volumes.contains(&data_dir), || {
        format!("VOLUME {volumes:?} does not hold COOKIE_CRUD_DATA_DIR {data_dir:?}")
    });
    let (uid, _) = image_user(runtime);
    p.check(uid.is_some_and(|u| u != 0), || {
        "USER must be a numeric non-root uid".into()
    });
    let runs = runtime.all("RUN").join(" ");
    if let Some(uid) = uid {
        p.check(runs.contains(&format!("--uid {uid}")), || {
            format!("no user is created with uid {uid}")
        });
        p.check(runs.contains("chown") && runs.contains(&data_dir), || {
            format!("{data_dir} is not chowned to the user")
        });
    }
    p.finish("deploy/Dockerfile")
}

/// Every `path` of a dependency table of `manifest`: `[dependencies]`, `[dev-dependencies]`,
/// `[build-dependencies]`, `[workspace.dependencies]`, target-specific ones and `[patch.*]`.
fn path_dependencies(manifest: &toml::Table) -> Vec<String> {
    fn deps_in(table: Option<&toml::Value>, out: &mut Vec<String>) {
        for dep in table.and_then(|t| t.as_table()).into_iter().flatten() {
            if let Some(path) = dep.1.get("path").and_then(|p| p.as_str()) {
                out.push(path.trim_end_matches('/').to_string());
            }
        }
    }
    let mut out = Vec::new();
    for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
        deps_in(manifest.get(kind), &mut out);
        deps_in(
            manifest.get("workspace").and_then(|w| w.get(kind)),
            &mut out,
        );
        for target in manifest
            .get("target")
            .and_then(|t| t.as_table())
            .into_iter()
            .flatten()
        {
            deps_in(target.1.get(kind), &mut out);
        }
    }
    for registry in manifest
        .get("patch")
        .and_then(|p| p.as_table())
        .into_iter()
        .flatten()
    {
        deps_in(Some(registry.1), &mut out);
    }
    out
}

/// The repository-relative paths that `include_str!`/`include_bytes!` with a literal path
/// name in the `.rs` files under `dirs` and in `build.rs`. Code after `#[cfg(test)]` is
/// not read: tests are not built in the image (and this crate keeps its test modules last).
fn included_files(repo: &Path, dirs: &[String]) -> Vec<String> {
    fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rs_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for d in dirs {
        rs_files(&repo.join(d), &mut files);
    }
    files.push(repo.join("build.rs"));
    let mut out = Vec::new();
    for file in files.iter().filter(|f| f.is_file()) {
        let text = read(file);
        let built = text.split("#[cfg(test)]").next().unwrap_or("");
        for mac in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in built.match_indices(mac) {
                let rest = &built[at + mac.len()..];
                let Some(end) = rest.find('"') else { continue };
                let target = file.parent().unwrap().join(&rest[..end]);
                // Lexically, so that a missing file is still named.
                let mut parts: Vec<String> = Vec::new();
                for c in target.strip_prefix(repo).unwrap_or(&target).components() {
                    match c {
                        std::path::Component::ParentDir => {
                            parts.pop();
                        }
                        std::path::Component::Normal(n) => {
                            parts.push(n.to_string_lossy().into_owned())
                        }
                        _ => {}
                    }
                }
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The image exposes its two listeners, the client port (`COOKIE_CRUD_LISTEN`) and the peer
/// port (`COOKIE_CRUD_PEER_LISTEN`, or the node's default), and nothing else; both bind
/// every interface, or nothing outside the container reaches them.
fn check_image_ports(p: &mut Problems, runtime: &Stage, env: &Env) {
    let listen = env.get("COOKIE_CRUD_LISTEN");
    let peer = peer_listen(env);
    let mut want: Vec<Option<u16>> = vec![
        listen.and_then(|l| port_of(l)),
        peer.as_deref().and_then(port_of),
    ];
    want.sort();
    let mut exposed: Vec<Option<u16>> = runtime
        .all("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|w| w.trim_end_matches("/tcp").parse().ok())
        .collect();
    exposed.sort();
    p.check(!want.contains(&None) && exposed == want, || {
        format!(
            "EXPOSE {exposed:?} differs from the ports of COOKIE_CRUD_LISTEN and \
             COOKIE_CRUD_PEER_LISTEN {want:?}"
        )
    });
    p.check(want[0] != want[1], || {
        format!("COOKIE_CRUD_PEER_LISTEN {peer:?} is also the client port: peers need their own")
    });
    p.check(listen.is_some_and(|l| binds_all_interfaces(l)), || {
        "COOKIE_CRUD_LISTEN must listen on 0.0.0.0 in a container".into()
    });
    p.check(peer.as_deref().is_some_and(binds_all_interfaces), || {
        format!(
            "COOKIE_CRUD_PEER_LISTEN {peer:?} must listen on 0.0.0.0 in a container (the other \
             nodes reach it)"
        )
    });
}

/// `USER uid[:gid]` of a stage.
pub(crate) fn image_user(stage: &Stage) -> (Option<u64>, Option<u64>) {
    let user = stage
        .all("USER")
        .last()
        .map(|u| u.to_string())
        .unwrap_or_default();
    let (u, g) = user.split_once(':').unwrap_or((&user, ""));
    (u.parse().ok(), g.parse().ok())
}

/// The image's user and volume are the ones the StatefulSet runs with and mounts, and its
/// ENV does not move the listeners the ConfigMap sets.
pub(crate) fn check_image_matches_pods(dockerfile: &str, objects: &[Value]) -> Check {
    let mut p = Problems::default();
    let stages = dockerfile_stages(dockerfile);
    let runtime = stages.last().ok_or("no stage")?;
    let (uid, gid) = image_user(runtime);
    let sts = objects_of(objects, "StatefulSet");
    let sc = &sts.first().ok_or("no StatefulSet")?["spec"]["template"]["spec"]["securityContext"];
    p.check(sc["runAsUser"].as_u64() == uid, || {
        format!(
            "StatefulSet runAsUser {} differs from the image's USER {uid:?}",
            sc["runAsUser"]
        )
    });
    if let Some(gid) = gid {
        p.check(sc["fsGroup"].as_u64() == Some(gid), || {
            format!(
                "StatefulSet fsGroup {} differs from the image's group {gid}",
                sc["fsGroup"]
            )
        });
    }
    let env = pod_environment(objects, &runtime.env(), 0);
    let image_dir = runtime.env().get("COOKIE_CRUD_DATA_DIR").cloned();
    p.check(
        env.get("COOKIE_CRUD_DATA_DIR") == image_dir.as_ref(),
        || {
            format!(
                "the pods' COOKIE_CRUD_DATA_DIR {:?} is not the image's volume {image_dir:?}",
                env.get("COOKIE_CRUD_DATA_DIR")
            )
        },
    );
    // The Kubernetes check reads the listeners from the ConfigMap alone: the image's ENV
    // under it must not move them (e.g. a COOKIE_CRUD_PEER_LISTEN the ConfigMap leaves out).
    let without_image = pod_environment(objects, &Env::new(), 0);
    for (what, theirs, ours) in [
        (
            "COOKIE_CRUD_LISTEN",
            env.get("COOKIE_CRUD_LISTEN").cloned(),
            without_image.get("COOKIE_CRUD_LISTEN").cloned(),
        ),
        (
            "COOKIE_CRUD_PEER_LISTEN",
            peer_listen(&env),
            peer_listen(&without_image),
        ),
    ] {
        p.check(theirs == ours, || {
            format!(
                "the pods' {what} is {theirs:?} with the image's ENV but {ours:?} from the \
                 ConfigMap, which the Kubernetes checks read"
            )
        });
    }
    p.finish("Dockerfile and StatefulSet")
}

pub(crate) fn image_env() -> BTreeMap<String, String> {
    dockerfile_stages(&dockerfile_text())
        .last()
        .expect("a runtime stage")
        .env()
}

#[test]
fn dockerfile_builds_the_workspace_and_runs_it_unprivileged() {
    let ignore = read(&root().join(".dockerignore"));
    check_dockerfile(&dockerfile_text(), &ignore, &root()).unwrap_or_else(|e| panic!("{e}"));
}
