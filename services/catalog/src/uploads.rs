//! Uploaded MIB files: one module's text or an archive of many, read with
//! limits (an archive bomb is refused, nothing stored), then resolved with
//! mib-rs against the standard set and the tenant's modules.
use crate::mibs::MibSet;
use rdm_proto::catalog as pb;
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read,
};

/// Bytes all files of one upload may unpack to.
pub const MAX_UNPACKED: u64 = 32 << 20;
/// Files one archive may hold.
pub const MAX_FILES: usize = 1000;

/// One file of an upload.
#[derive(Debug)]
pub struct File {
    pub name: String,
    pub text: String,
}

enum Kind {
    TarGz,
    Zip,
    Text,
}

fn kind(filename: &str, data: &[u8]) -> Kind {
    let name = filename.to_ascii_lowercase();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") || data.starts_with(&[0x1f, 0x8b]) {
        Kind::TarGz
    } else if name.ends_with(".zip") || data.starts_with(b"PK\x03\x04") {
        Kind::Zip
    } else {
        Kind::Text
    }
}

/// An archive's member that is an archive itself.
fn nested(name: &str, head: &[u8]) -> bool {
    let name = name.to_ascii_lowercase();
    [".gz", ".tgz", ".zip", ".tar", ".bz2", ".xz"]
        .iter()
        .any(|e| name.ends_with(e))
        || head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(b"PK\x03\x04")
}

/// Reads at most what the upload has left to unpack.
fn read_limited(r: impl Read, used: &mut u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(MAX_UNPACKED - *used + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("the archive could not be read: {e}"))?;
    *used += out.len() as u64;
    if *used > MAX_UNPACKED {
        return Err(format!(
            "the upload unpacks to more than {} MiB: refused",
            MAX_UNPACKED >> 20
        ));
    }
    Ok(out)
}

/// A member's path, refused when it would leave the archive.
fn member_name(path: &str) -> Result<String, String> {
    let p = std::path::Path::new(path);
    let escapes = p.is_absolute()
        || p.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
    if escapes {
        return Err(format!("{path:?} leaves the archive: refused"));
    }
    Ok(path.to_owned())
}

/// The upload's files. An archive that is too big, holds too many files,
/// an archive, or a path leaving it is refused whole.
pub fn files(filename: &str, data: &[u8]) -> Result<Vec<File>, String> {
    let mut used = 0;
    let mut out = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>| -> Result<(), String> {
        if nested(&name, &bytes) {
            return Err(format!("{name} is an archive inside the archive: refused"));
        }
        out.push(File {
            name,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        });
        if out.len() > MAX_FILES {
            return Err(format!(
                "the archive holds more than {MAX_FILES} files: refused"
            ));
        }
        Ok(())
    };
    match kind(filename, data) {
        Kind::Text => {
            let bytes = read_limited(data, &mut used)?;
            let name = if filename.is_empty() {
                "upload"
            } else {
                filename
            };
            add(name.to_owned(), bytes)?;
        }
        Kind::TarGz => {
            let gz = flate2::read::GzDecoder::new(data);
            let mut archive = tar::Archive::new(gz);
            let entries = archive
                .entries()
                .map_err(|e| format!("not a .tar.gz archive: {e}"))?;
            for entry in entries {
                let entry = entry.map_err(|e| format!("the archive could not be read: {e}"))?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let path = entry
                    .path()
                    .map_err(|e| format!("a member's path could not be read: {e}"))?
                    .to_string_lossy()
                    .into_owned();
                let name = member_name(&path)?;
                let bytes = read_limited(entry, &mut used)?;
                add(name, bytes)?;
            }
        }
        Kind::Zip => {
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data))
                .map_err(|e| format!("not a .zip archive: {e}"))?;
            if archive.len() > MAX_FILES {
                return Err(format!(
                    "the archive holds more than {MAX_FILES} files: refused"
                ));
            }
            for i in 0..archive.len() {
                let entry = archive
                    .by_index(i)
                    .map_err(|e| format!("the archive could not be read: {e}"))?;
                if entry.is_dir() {
                    continue;
                }
                let name = member_name(entry.name())?;
                let bytes = read_limited(entry, &mut used)?;
                add(name, bytes)?;
            }
        }
    }
    Ok(out)
}

/// The modules a text defines (`NAME DEFINITIONS ::= BEGIN`).
fn module_names(text: &str) -> Vec<String> {
    static HEADER: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?m)^\s*([A-Za-z][A-Za-z0-9-]*)\s+(?:PIB-)?DEFINITIONS\s*::=\s*BEGIN")
            .expect("a valid pattern")
    });
    HEADER
        .captures_iter(text)
        .map(|c| c[1].to_owned())
        .collect()
}

/// What resolving an upload found: the modules to store (name, text), and
/// the report.
pub struct Resolved {
    pub store: Vec<(String, String)>,
    pub report: pb::MibUpload,
}

/// Resolves the uploaded files against the standard set and the tenant's
/// `existing` modules (name, text). A module named like a standard one
/// replaces it for this tenant only.
pub fn resolve(files: Vec<File>, existing: &[(String, String)]) -> Resolved {
    let mut report = pb::MibUpload::default();
    let mut new: BTreeMap<String, (String, String)> = BTreeMap::new();
    for file in files {
        let names = module_names(&file.text);
        if names.is_empty() {
            report.failed.push(pb::MibFailure {
                file: file.name.clone(),
                message: "no module in it (no `NAME DEFINITIONS ::= BEGIN`)".into(),
                ..Default::default()
            });
            continue;
        }
        for name in names {
            new.insert(name, (file.name.clone(), file.text.clone()));
        }
    }
    let mut all: Vec<(String, String)> = existing
        .iter()
        .filter(|(n, _)| !new.contains_key(n))
        .cloned()
        .collect();
    all.extend(new.iter().map(|(n, (_, text))| (n.clone(), text.clone())));
    let set = match MibSet::load(&all) {
        Ok(set) => set,
        Err(e) => {
            report.status = "failed".into();
            report.error = e.message;
            return Resolved {
                store: Vec::new(),
                report,
            };
        }
    };
    let mut store = Vec::new();
    for (name, (file, text)) in &new {
        let fatal = set.mib.diagnostics().iter().find(|d| {
            d.module.as_deref() == Some(name.as_str())
                && d.severity.at_least(mib_rs::Severity::Severe)
        });
        match (set.mib.module(name), fatal) {
            (Some(_), None) => {
                report.added.push(name.clone());
                store.push((name.clone(), text.clone()));
            }
            (_, d) => report.failed.push(pb::MibFailure {
                module: name.clone(),
                file: file.clone(),
                line: d
                    .and_then(|d| d.range)
                    .map(|r| line_of(text, r.start().as_usize()))
                    .unwrap_or_default(),
                message: d.map_or_else(
                    || "it could not be parsed".to_owned(),
                    |d| d.message.clone(),
                ),
            }),
        }
    }
    report.missing_imports = missing_imports(&set, new.keys());
    report.status = "done".into();
    Resolved { store, report }
}

fn line_of(text: &str, offset: usize) -> i32 {
    let end = offset.min(text.len());
    (text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1) as i32
}

/// The imports of `modules` that no module provides.
fn missing_imports<'a>(
    set: &MibSet,
    modules: impl Iterator<Item = &'a String>,
) -> Vec<pb::MissingImport> {
    let modules: BTreeSet<&String> = modules.collect();
    let mut missing: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for u in set.mib.unresolved() {
        if u.kind != mib_rs::mib::UnresolvedKind::Import || !modules.contains(&u.module) {
            continue;
        }
        let from = set
            .mib
            .module(&u.module)
            .and_then(|m| {
                m.imports()
                    .iter()
                    .find(|i| i.symbols.iter().any(|s| s.name == u.symbol))
                    .map(|i| i.module.clone())
            })
            .unwrap_or_default();
        missing
            .entry((u.module.clone(), from))
            .or_default()
            .push(u.symbol.clone());
    }
    missing
        .into_iter()
        .map(|((module, from), symbols)| pb::MissingImport {
            module,
            from,
            symbols,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        for (name, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn zip(members: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in members {
            w.start_file(*name, options).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn zips_are_read_within_limits() {
        let ok = zip(&[("A-MIB.my", b"A-MIB DEFINITIONS ::= BEGIN END")]);
        assert_eq!(files("x.zip", &ok).unwrap()[0].name, "A-MIB.my");
        let bomb = zip(&[("big.txt", &vec![0u8; 40 << 20])]);
        assert!(bomb.len() < 1 << 20);
        assert!(
            files("bomb.zip", &bomb)
                .unwrap_err()
                .contains("more than 32 MiB")
        );
        let escape = zip(&[("../../etc/A.txt", b"x")]);
        assert!(
            files("e.zip", &escape)
                .unwrap_err()
                .contains("leaves the archive")
        );
        let inner = zip(&[("inner.zip", &ok)]);
        assert!(
            files("n.zip", &inner)
                .unwrap_err()
                .contains("archive inside")
        );
    }

    #[test]
    fn archives_are_read_within_limits() {
        let ok = tar_gz(&[("mibs/A-MIB.txt", b"A-MIB DEFINITIONS ::= BEGIN END")]);
        let read = files("x.tgz", &ok).unwrap();
        assert_eq!(read[0].name, "mibs/A-MIB.txt");
        // A gzip bomb: 40 MiB of zeros in a few tens of KiB.
        let bomb = tar_gz(&[("big.txt", &vec![0u8; 40 << 20])]);
        assert!(bomb.len() < 1 << 20);
        assert!(
            files("bomb.tar.gz", &bomb)
                .unwrap_err()
                .contains("more than 32 MiB")
        );
        let inner = tar_gz(&[("inner.tar.gz", &ok)]);
        assert!(
            files("x.tar.gz", &inner)
                .unwrap_err()
                .contains("archive inside")
        );
        assert!(member_name("../etc/passwd").is_err() && member_name("/etc/passwd").is_err());
        assert_eq!(
            module_names("X-MIB DEFINITIONS ::= BEGIN\nEND\n"),
            ["X-MIB"]
        );
    }
}
