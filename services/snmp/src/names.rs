//! OIDs named for replies and names read in requests: by the standard MIB
//! modules in this process, and, for what those leave unnamed, by the
//! catalog's `TranslateOids` as the caller, so a tenant's own modules
//! (an enterprise MIB it uploaded) name its devices' variables too.
use crate::engine::{
    oid::Oid,
    value::{Value, VarBind},
};
use rdm_kit::{Error, Principal, Result, client::Forward, invoke::Backend};
use rdm_proto::{
    catalog::{self as catalog_pb, mib_service_client::MibServiceClient},
    snmp as pb,
};
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

/// Names OIDs for one caller (one request: a walk's every batch).
#[derive(Clone)]
pub struct Namer {
    /// The catalog; None: the standard modules alone.
    catalog: Option<Backend>,
    forward: Forward,
    /// The catalog said the tenant has no modules of its own: the rest of
    /// this request does not ask again.
    standard_only: Arc<AtomicBool>,
}

impl Namer {
    pub fn new(catalog: Option<&Backend>, p: &Principal) -> Self {
        Self {
            catalog: catalog.cloned(),
            forward: Forward::new(Some(p), None),
            standard_only: Arc::default(),
        }
    }

    /// `queries` translated by the caller's catalog; None when there is no
    /// catalog, the tenant has no modules of its own, or the catalog did
    /// not answer (logged: a reply is not refused for want of names).
    async fn translate(
        &self,
        queries: Vec<String>,
        integers: HashMap<i32, i64>,
    ) -> Option<Vec<catalog_pb::Translation>> {
        if self.standard_only.load(Ordering::Relaxed) {
            return None;
        }
        let backend = self.catalog.clone()?;
        let mut client = MibServiceClient::with_interceptor(backend, self.forward.clone());
        let request = catalog_pb::TranslateOidsRequest { queries, integers };
        match client.translate_oids(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if reply.standard_only {
                    self.standard_only.store(true, Ordering::Relaxed);
                }
                Some(reply.translations)
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), error = %status.message(), "the catalog did not name OIDs");
                None
            }
        }
    }

    /// Variables as replies show them: each named, an enumerated INTEGER
    /// labelled. What the standard modules name only by a node above its
    /// object goes to the catalog, in one call.
    pub async fn varbinds(&self, vbs: Vec<VarBind>) -> Vec<pb::VarBind> {
        let (mut out, unnamed) = standard(vbs);
        if unnamed.is_empty()
            || self.catalog.is_none()
            || self.standard_only.load(Ordering::Relaxed)
        {
            return out;
        }
        let queries = unnamed.iter().map(|(i, _)| out[*i].oid.clone()).collect();
        let integers = (unnamed.iter().enumerate())
            .filter_map(|(q, (_, integer))| Some((q as i32, (*integer)?)))
            .collect();
        if let Some(translations) = self.translate(queries, integers).await {
            for ((i, _), t) in unnamed.iter().zip(translations) {
                if t.error.is_empty() && !t.name.is_empty() {
                    out[*i].name = t.name;
                    out[*i].label = t.label;
                }
            }
        }
        out
    }

    /// OIDs a request gives, dotted or named (`sysDescr.0`,
    /// `IF-MIB::ifDescr.1`, or a name only the tenant's modules know); an
    /// error names `field(i)`.
    pub async fn oids(&self, texts: &[&str], field: impl Fn(usize) -> String) -> Result<Vec<Oid>> {
        let mut out = Vec::with_capacity(texts.len());
        let mut unknown = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            match parse_oid(text) {
                Ok(oid) => out.push(Some(oid)),
                Err(Parsed::Bad(why)) => return Err(Error::invalid(field(i), why)),
                Err(Parsed::Unknown(why)) => {
                    unknown.push((i, why));
                    out.push(None);
                }
            }
        }
        if let Some(&(i, ref why)) = unknown.first() {
            let queries = unknown.iter().map(|(i, _)| texts[*i].to_owned()).collect();
            let Some(translations) = self.translate(queries, HashMap::new()).await else {
                return Err(Error::invalid(field(i), why.clone()));
            };
            for ((i, _), t) in unknown.iter().zip(translations) {
                let oid = (t.error.is_empty())
                    .then(|| t.oid.parse::<Oid>().ok())
                    .flatten()
                    .ok_or_else(|| {
                        let why = if t.error.is_empty() {
                            format!("{} is not an OID an agent takes", t.oid)
                        } else {
                            t.error
                        };
                        Error::invalid(field(*i), why)
                    })?;
                out[*i] = Some(oid);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// Variables named by the standard modules alone, and which of them (with
/// their INTEGER value) only a node above their object names.
pub fn standard(vbs: Vec<VarBind>) -> (Vec<pb::VarBind>, Vec<(usize, Option<i64>)>) {
    let modules = rdm_catalog::mibs::standard();
    let mut unnamed = Vec::new();
    let out = vbs
        .into_iter()
        .enumerate()
        .map(|(i, vb)| {
            let (value, hex) = vb.value.to_text();
            let integer = match vb.value {
                Value::Integer(n) => Some(n),
                _ => None,
            };
            let (name, label, object) = modules.describe(vb.oid.arcs(), integer);
            if !object {
                unnamed.push((i, integer));
            }
            pb::VarBind {
                oid: vb.oid.to_string(),
                r#type: vb.value.type_name().to_owned(),
                value,
                hex,
                name,
                label,
            }
        })
        .collect();
    (out, unnamed)
}

/// Why a text is not an OID: not one at all, or a name the standard
/// modules do not know (the tenant's may).
enum Parsed {
    Bad(String),
    Unknown(String),
}

/// A dotted OID, or a name the standard modules know.
fn parse_oid(text: &str) -> Result<Oid, Parsed> {
    let named = text
        .trim_start()
        .starts_with(|c: char| c.is_ascii_alphabetic());
    match text.parse::<Oid>() {
        Ok(oid) => Ok(oid),
        Err(e) if !named => Err(Parsed::Bad(e.to_string())),
        Err(_) => {
            let oid = rdm_catalog::mibs::standard()
                .oid_of(text)
                .map_err(|e| Parsed::Unknown(e.message))?;
            Oid::try_from_arcs(&oid)
                .ok_or_else(|| Parsed::Bad(format!("{text} is not an OID an agent takes")))
        }
    }
}
