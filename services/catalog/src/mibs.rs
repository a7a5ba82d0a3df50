//! MIB modules, parsed and resolved by mib-rs, and what the MibService asks
//! of them: modules, objects, the OID tree, search, and OID translation
//! with table indexes decoded by their INDEX clauses.
use crate::search::Query;
use mib_rs::{IndexSchema, Kind, Mib, Node, Object, Oid};
use rdm_kit::{Error, Result};
use rdm_proto::catalog as pb;
use std::{collections::HashMap, fmt::Write, sync::Arc};

/// The standard modules, as net-snmp ships them (license beside them in
/// `mibs/COPYING.net-snmp`): loaded at start, shared by every tenant.
pub const STANDARD: &[(&str, &str)] = &[
    ("SNMPv2-SMI", include_str!("../mibs/SNMPv2-SMI.txt")),
    ("SNMPv2-TC", include_str!("../mibs/SNMPv2-TC.txt")),
    ("SNMPv2-CONF", include_str!("../mibs/SNMPv2-CONF.txt")),
    ("SNMPv2-MIB", include_str!("../mibs/SNMPv2-MIB.txt")),
    ("RFC1155-SMI", include_str!("../mibs/RFC1155-SMI.txt")),
    ("RFC-1215", include_str!("../mibs/RFC-1215.txt")),
    ("RFC1213-MIB", include_str!("../mibs/RFC1213-MIB.txt")),
    ("IANAifType-MIB", include_str!("../mibs/IANAifType-MIB.txt")),
    ("IF-MIB", include_str!("../mibs/IF-MIB.txt")),
    (
        "INET-ADDRESS-MIB",
        include_str!("../mibs/INET-ADDRESS-MIB.txt"),
    ),
    ("HCNUM-TC", include_str!("../mibs/HCNUM-TC.txt")),
    ("IP-MIB", include_str!("../mibs/IP-MIB.txt")),
    ("TCP-MIB", include_str!("../mibs/TCP-MIB.txt")),
    ("UDP-MIB", include_str!("../mibs/UDP-MIB.txt")),
];

/// A resolved set of modules, and the INDEX schema of every row, compiled
/// once (translation decodes instances with them).
pub struct MibSet {
    pub mib: Mib,
    /// Modules of the standard set, by name.
    standard: Vec<String>,
    indexes: HashMap<String, Arc<IndexSchema>>,
}

/// The standard set, loaded once per process (the catalog and the SNMP
/// service share it under `rdm up`).
pub fn standard() -> &'static MibSet {
    static SET: std::sync::LazyLock<MibSet> = std::sync::LazyLock::new(|| {
        // The modules are compiled into the binary and tested: they load.
        MibSet::load_standard().expect("the standard MIB modules load")
    });
    &SET
}

impl MibSet {
    /// The standard modules, resolved.
    pub fn load_standard() -> Result<Self> {
        Self::load(&[])
    }

    /// The standard modules and a tenant's (name, text), resolved together.
    pub fn load(extra: &[(String, String)]) -> Result<Self> {
        // A tenant's module of a standard module's name replaces it, for
        // that tenant only.
        let standard_kept = STANDARD
            .iter()
            .filter(|(name, _)| !extra.iter().any(|(n, _)| n == name));
        let sources =
            standard_kept
                .clone()
                .map(|(name, text)| mib_rs::source::memory(*name, text.as_bytes().to_vec()))
                .chain(extra.iter().map(|(name, text)| {
                    mib_rs::source::memory(name.clone(), text.as_bytes().to_vec())
                }))
                .collect();
        let names = standard_kept
            .map(|(name, _)| (*name).to_owned())
            .chain(extra.iter().map(|(name, _)| name.clone()));
        let mib = mib_rs::Loader::new()
            .source(mib_rs::source::chain(sources))
            .modules(names)
            .load()
            .map_err(|e| Error::internal("loading MIB modules", e))?;
        let standard = STANDARD
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .filter(|n| !extra.iter().any(|(e, _)| e == n))
            .collect();
        Ok(Self::new(mib, standard))
    }

    fn new(mib: Mib, standard: Vec<String>) -> Self {
        let indexes = mib
            .rows()
            .filter_map(|row| {
                let schema = IndexSchema::compile(row).ok()?;
                Some((row.name().to_owned(), Arc::new(schema)))
            })
            .collect();
        Self {
            mib,
            standard,
            indexes,
        }
    }

    fn summary(&self, node: Node<'_>) -> pb::MibNodeSummary {
        pb::MibNodeSummary {
            name: node.name().to_owned(),
            module: node
                .module()
                .map(|m| m.name().to_owned())
                .unwrap_or_default(),
            oid: node.oid().to_string(),
            kind: node.kind().to_string(),
            child_count: node.children().count() as i32,
        }
    }

    fn module_pb(&self, m: mib_rs::Module<'_>) -> pb::MibModule {
        let mut imports: Vec<String> = m.imports().iter().map(|i| i.module.clone()).collect();
        imports.sort();
        imports.dedup();
        pb::MibModule {
            name: m.name().to_owned(),
            standard: self.standard.iter().any(|s| s == m.name()),
            language: m.language().to_string(),
            organization: m.organization().to_owned(),
            last_updated: m.last_updated().to_owned(),
            description: m.description().to_owned(),
            imports,
            object_count: m.objects().count() as i32,
            notification_count: m.nodes().filter(|n| n.kind() == Kind::Notification).count() as i32,
            textual_convention_count: m.types().filter(|t| t.is_textual_convention()).count()
                as i32,
        }
    }

    /// Every module that was loaded (the base ones mib-rs builds in aside).
    pub fn modules(&self) -> Vec<pb::MibModule> {
        let mut modules: Vec<_> = self
            .mib
            .modules()
            .filter(|m| !m.is_base() || self.standard.iter().any(|s| s == m.name()))
            .map(|m| self.module_pb(m))
            .collect();
        modules.sort_by(|a, b| a.name.cmp(&b.name));
        modules
    }

    pub fn module(&self, name: &str) -> Result<pb::GetMibModuleResponse> {
        let m = self
            .mib
            .module(name)
            .ok_or_else(|| Error::not_found(format!("no MIB module {name}")))?;
        let mut objects: Vec<_> = m.objects().filter_map(|o| o.node()).collect();
        objects.sort_by(|a, b| a.oid().cmp(b.oid()));
        let notifications = m
            .nodes()
            .filter(|n| n.kind() == Kind::Notification)
            .map(|n| self.summary(n))
            .collect();
        let textual_conventions = m
            .types()
            .filter(|t| t.is_textual_convention())
            .map(|t| pb::TextualConvention {
                name: t.name().to_owned(),
                base_type: t.effective_base().to_string(),
                display_hint: t.effective_display_hint().to_owned(),
                status: t.status().to_string(),
                description: t.description().to_owned(),
            })
            .collect();
        Ok(pb::GetMibModuleResponse {
            module: Some(self.module_pb(m)),
            objects: objects.into_iter().map(|n| self.summary(n)).collect(),
            notifications,
            textual_conventions,
        })
    }

    /// The node a query names exactly: a name, `MODULE::name` or an OID.
    fn node(&self, query: &str) -> Result<Node<'_>> {
        let query = query.trim();
        let oid = self
            .mib
            .resolve_oid(query)
            .map_err(|e| Error::not_found(format!("{query}: {e}")))?;
        self.mib
            .exact_node_by_oid(&oid)
            .filter(|n| !n.name().is_empty())
            .ok_or_else(|| Error::not_found(format!("no MIB object is {query} ({oid})")))
    }

    pub fn object(&self, query: &str) -> Result<pb::MibObject> {
        let node = self.node(query)?;
        let mut out = pb::MibObject {
            name: node.name().to_owned(),
            module: node
                .module()
                .map(|m| m.name().to_owned())
                .unwrap_or_default(),
            oid: node.oid().to_string(),
            kind: node.kind().to_string(),
            description: description(node).to_owned(),
            status: node.status().map(|s| s.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        if let Some(o) = node.object() {
            object_details(o, &mut out);
        }
        if let Some(n) = node.notification() {
            out.objects = n.objects().map(|o| o.name().to_owned()).collect();
        }
        Ok(out)
    }

    pub fn tree(
        &self,
        root: &str,
        after: Option<u32>,
        size: usize,
    ) -> Result<pb::GetMibTreeResponse> {
        let node = if root.trim().is_empty() {
            self.mib.root_node()
        } else {
            self.node(root)?
        };
        let mut children: Vec<Node<'_>> = node
            .children()
            .filter(|c| after.is_none_or(|a| c.arc() > a))
            .take(size + 1)
            .collect();
        let next_page_token = if children.len() > size {
            children.truncate(size);
            children
                .last()
                .map(|c| c.arc().to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::GetMibTreeResponse {
            node: Some(self.summary(node)),
            children: children.into_iter().map(|c| self.summary(c)).collect(),
            next_page_token,
        })
    }

    /// Named nodes matching `q`, best first (see the proto for the order).
    pub fn search(&self, q: &str, size: usize) -> Vec<pb::SearchHit> {
        let q = q.trim();
        let query = Query::new(q);
        let oid_prefix: Option<Oid> = q
            .strip_prefix('.')
            .unwrap_or(q)
            .parse()
            .ok()
            .filter(|_| q.contains('.') || q.chars().all(|c| c.is_ascii_digit()));
        let mut hits: Vec<(i32, &str, Node<'_>)> = self
            .mib
            .nodes()
            .filter(|n| !n.name().is_empty() && n.module().is_some())
            .filter_map(|n| {
                let by_name = query.rank(n.name(), || description(n).to_owned());
                // An OID under the query ranks below a name that starts
                // with it, above the rest.
                let (score, matched) = match by_name {
                    Some(hit) if hit.0 >= 80 => hit,
                    _ if oid_prefix.as_ref().is_some_and(|p| n.oid().starts_with(p)) => {
                        (70 - (n.oid().len() as i32).min(60) / 2, "oid")
                    }
                    hit => hit?,
                };
                Some((score, matched, n))
            })
            .collect();
        hits.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.oid().cmp(b.2.oid())));
        hits.into_iter()
            .take(size)
            .map(|(score, matched, n)| pb::SearchHit {
                node: Some(self.summary(n)),
                matched: matched.to_owned(),
                score,
            })
            .collect()
    }

    /// One query translated the other way: an OID to its name, a name to
    /// its OID; an instance's index decoded.
    /// `query` translated the other way; `integer`, a value read at it, is
    /// labelled by the object's enumeration.
    pub fn translate(&self, query: &str, integer: Option<i64>) -> pb::Translation {
        let q = query.trim();
        let oid = match self.mib.resolve_oid(q) {
            Ok(oid) => oid,
            Err(e) => {
                return pb::Translation {
                    query: query.to_owned(),
                    error: e.to_string(),
                    ..Default::default()
                };
            }
        };
        // A numeric query is the OID already (less a leading dot).
        let numeric = q.strip_prefix('.').unwrap_or(q);
        let oid_text = if numeric.starts_with(|c: char| c.is_ascii_digit()) {
            numeric.to_owned()
        } else {
            oid.to_string()
        };
        match self.named(&oid) {
            Some(named) => pb::Translation {
                query: query.to_owned(),
                oid: oid_text,
                label: integer.map(|v| label(&named.node, v)).unwrap_or_default(),
                name: named.name,
                object: named.node.name().to_owned(),
                module: named
                    .node
                    .module()
                    .map(|m| m.name().to_owned())
                    .unwrap_or_default(),
                index: named.index,
                error: String::new(),
            },
            None => pb::Translation {
                query: query.to_owned(),
                error: format!("no MIB object holds {oid_text}"),
                oid: oid_text,
                ..Default::default()
            },
        }
    }

    /// A name's numeric OID (`IF-MIB::ifDescr.1`, `sysDescr.0`).
    pub fn oid_of(&self, name: &str) -> Result<Oid> {
        self.mib
            .resolve_oid(name.trim())
            .map_err(|e| Error::invalid("", format!("{name}: {e}")))
    }

    /// What a reply shows beside an OID: its name (empty when no module
    /// has it), for an enumerated INTEGER the value's label (`up(1)`), and
    /// whether an object (OBJECT-TYPE) named it rather than some node
    /// above it (`SNMPv2-SMI::enterprises.2021.4.5.0`).
    pub fn describe(&self, arcs: &[u32], integer: Option<i64>) -> (String, String, bool) {
        let Some(named) = self.named(&Oid::from(arcs.to_vec())) else {
            return (String::new(), String::new(), false);
        };
        let label = integer.map(|v| label(&named.node, v)).unwrap_or_default();
        (named.name, label, named.node.object().is_some())
    }

    /// The deepest named node holding `oid`, its name with the instance's
    /// arcs, and a column's index decoded by its row's INDEX.
    fn named(&self, oid: &Oid) -> Option<Named<'_>> {
        let lookup = self.mib.lookup_instance(oid);
        let node = lookup.node();
        if node.name().is_empty() {
            return None;
        }
        let module = node.module().map(|m| m.name()).unwrap_or_default();
        let mut name = format!("{module}::{}", node.name());
        let decoded = node
            .object()
            .filter(|o| o.is_column() && !lookup.suffix().is_empty())
            .and_then(|o| self.indexes.get(o.row()?.name()))
            .and_then(|schema| {
                let decoded = lookup
                    .decode_indexes_exact(schema, mib_rs::DecodeOptions::new(128))
                    .ok()?;
                Some(
                    decoded
                        .components()
                        .map(|c| pb::IndexValue {
                            name: c.name().to_owned(),
                            value: c.value().to_string(),
                        })
                        .collect::<Vec<_>>(),
                )
            });
        // The name keeps the instance's arcs, so it always reads back as
        // the OID; the index's values are beside it, decoded.
        for arc in lookup.suffix() {
            let _ = write!(name, ".{arc}");
        }
        let index = decoded.unwrap_or_default();
        Some(Named { node, name, index })
    }
}

/// `v`'s label in `node`'s enumeration (`up(1)`), or empty.
fn label(node: &Node, v: i64) -> String {
    node.object()
        .and_then(|o| o.effective_enums().iter().find(|e| e.value == v))
        .map(|e| format!("{}({v})", e.label))
        .unwrap_or_default()
}

/// An OID as its catalog names it.
struct Named<'a> {
    node: Node<'a>,
    name: String,
    index: Vec<pb::IndexValue>,
}

/// A node's description: its object's or notification's, where it has one.
fn description(n: Node<'_>) -> &str {
    n.object()
        .map(|o| o.description())
        .or_else(|| n.notification().map(|x| x.description()))
        .unwrap_or_else(|| n.description())
}

fn object_details(o: Object<'_>, out: &mut pb::MibObject) {
    let names = |values: &[mib_rs::mib::NamedValue]| {
        values
            .iter()
            .map(|v| pb::NamedNumber {
                label: v.label.clone(),
                value: i32::try_from(v.value).unwrap_or(i32::MAX),
            })
            .collect()
    };
    let strings = |ranges: &[mib_rs::mib::Range]| ranges.iter().map(|r| r.to_string()).collect();
    if let Some(ty) = o.ty() {
        out.syntax = Some(pb::MibSyntax {
            type_name: ty.name().to_owned(),
            base_type: ty.effective_base().to_string(),
            display_hint: o.effective_display_hint().to_owned(),
            ranges: strings(o.effective_ranges()),
            sizes: strings(o.effective_sizes()),
            enums: names(o.effective_enums()),
            bits: names(o.effective_bits()),
        });
    }
    out.access = o.access().to_string();
    out.status = o.status().to_string();
    out.units = o.units().to_owned();
    out.table = o.table().map(|t| t.name().to_owned()).unwrap_or_default();
    let row = if o.is_row() { Some(o) } else { o.row() };
    if let Some(row) = row {
        out.index = row
            .effective_indexes()
            .map(|i| pb::MibIndexPart {
                name: i.name().to_owned(),
                implied: i.implied(),
            })
            .collect();
        out.augments = row
            .augments()
            .map(|a| a.name().to_owned())
            .unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_set_loads_and_names_oids() {
        let set = standard();
        let names: Vec<String> = set.modules().into_iter().map(|m| m.name).collect();
        for m in ["IF-MIB", "SNMPv2-MIB", "RFC1213-MIB", "TCP-MIB"] {
            assert!(names.iter().any(|n| n == m), "{m} in {names:?}");
        }
        let t = set.translate("1.3.6.1.2.1.2.2.1.2.3", None);
        assert_eq!(
            (t.name.as_str(), t.object.as_str()),
            ("IF-MIB::ifDescr.3", "ifDescr")
        );
        assert_eq!(
            t.index,
            vec![pb::IndexValue {
                name: "ifIndex".into(),
                value: "3".into()
            }]
        );
        let back = set.translate("IF-MIB::ifDescr.3", None);
        assert_eq!(back.oid, "1.3.6.1.2.1.2.2.1.2.3");
        assert_eq!(set.translate("sysDescr.0", None).oid, "1.3.6.1.2.1.1.1.0");
        let ip = set.translate("1.3.6.1.2.1.4.20.1.2.10.0.0.1", None);
        assert_eq!(ip.name, "IP-MIB::ipAdEntIfIndex.10.0.0.1");
        assert_eq!(ip.index[0].value, "10.0.0.1");
        assert!(!set.translate("NO-MIB::x", None).error.is_empty());
        let status = set.oid_of("IF-MIB::ifOperStatus.2").unwrap();
        assert_eq!(
            set.describe(&status, Some(1)),
            (
                "IF-MIB::ifOperStatus.2".to_owned(),
                "up(1)".to_owned(),
                true
            )
        );
        assert_eq!(
            set.describe(&[1, 3, 6, 1, 4, 1, 99999, 1], Some(1)),
            (
                "SNMPv2-SMI::enterprises.99999.1".to_owned(),
                String::new(),
                false
            )
        );
        assert_eq!(
            set.translate("ifOperStatus.2", Some(7)).label,
            "lowerLayerDown(7)"
        );
    }
}
