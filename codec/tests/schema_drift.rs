//! The XML schema is the source of truth: this test fails when any Rust block
//! disagrees with it in name, template id, block length, field offset, size or type.

use std::collections::BTreeMap;

use ledgerbus_codec::messages::MESSAGES;
use ledgerbus_codec::{Block, FieldMeta, Id128, MessageHeader, PacketHeader, PacketKind, ResultCode};

/// What the XML says about one named type.
#[derive(Debug, Clone)]
enum XmlType {
    /// A primitive, possibly a fixed array (`length`).
    Primitive { primitive: String, length: usize },
    /// An enum or set over a primitive encoding.
    Encoded { encoding: String },
    /// A composite, with its size.
    Composite { size: usize },
}

fn primitive_size(primitive: &str) -> usize {
    match primitive {
        "char" | "int8" | "uint8" => 1,
        "int16" | "uint16" => 2,
        "int32" | "uint32" | "float" => 4,
        "int64" | "uint64" | "double" => 8,
        other => panic!("unknown primitive type {other}"),
    }
}

/// The Rust type a field of this primitive must have.
fn rust_type_for(primitive: &str, length: usize) -> String {
    let scalar = match primitive {
        "uint8" => "u8",
        "uint16" => "U16",
        "uint32" => "U32",
        "uint64" => "U64",
        other => panic!("ledgerbus uses no {other} fields"),
    };
    if length == 1 {
        scalar.to_string()
    } else {
        assert_eq!(scalar, "u8", "arrays are byte arrays only");
        format!("[u8; {length}]")
    }
}

fn camel_to_snake(name: &str) -> String {
    let mut out = String::new();
    let mut previous = ' ';
    let mut in_capitalised_word = false;
    for (index, ch) in name.chars().enumerate() {
        // A number after a capitalised word starts a word too: userData128 is
        // user_data_128 (but crc32 and reserved2 stay whole).
        let digits_start = ch.is_ascii_digit() && previous.is_ascii_alphabetic() && in_capitalised_word;
        if ch.is_ascii_uppercase() {
            in_capitalised_word = true;
        }
        previous = ch;
        if digits_start {
            out.push('_');
            out.push(ch);
        } else if ch.is_ascii_uppercase() {
            if index > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

struct Schema<'a> {
    doc: roxmltree::Document<'a>,
    types: BTreeMap<String, XmlType>,
}

impl<'a> Schema<'a> {
    fn parse(text: &'a str) -> Schema<'a> {
        let doc = roxmltree::Document::parse(text).expect("schema XML parses");
        let mut types = BTreeMap::new();
        let types_node = doc.descendants().find(|n| n.has_tag_name("types")).expect("<types>");
        for node in types_node.children().filter(|n| n.is_element()) {
            let name = node.attribute("name").expect("type has a name").to_string();
            let ty = match node.tag_name().name() {
                "type" => XmlType::Primitive {
                    primitive: node.attribute("primitiveType").unwrap().to_string(),
                    length: node.attribute("length").map_or(1, |l| l.parse().unwrap()),
                },
                "enum" | "set" => {
                    XmlType::Encoded { encoding: node.attribute("encodingType").unwrap().to_string() }
                }
                "composite" => XmlType::Composite { size: 0 },
                other => panic!("unexpected element <{other}> in <types>"),
            };
            types.insert(name, ty);
        }
        let mut schema = Schema { doc, types };
        // Composite sizes need the other types, so fill them in a second pass.
        let names: Vec<String> = schema.types.keys().cloned().collect();
        for name in names {
            if matches!(schema.types[&name], XmlType::Composite { .. }) {
                let size = schema.composite_fields(&name).iter().map(|f| f.size).sum();
                schema.types.insert(name, XmlType::Composite { size });
            }
        }
        schema
    }

    fn type_size_and_rust(&self, type_name: &str) -> (usize, String) {
        if let Some(ty) = self.types.get(type_name) {
            return match ty {
                XmlType::Primitive { primitive, length } => {
                    (primitive_size(primitive) * length, rust_type_for(primitive, *length))
                }
                XmlType::Encoded { encoding } => (primitive_size(encoding), rust_type_for(encoding, 1)),
                XmlType::Composite { size } => (*size, type_name.to_string()),
            };
        }
        (primitive_size(type_name), rust_type_for(type_name, 1))
    }

    /// Fields of a composite; offsets are explicit where given, else packed.
    fn composite_fields(&self, name: &str) -> Vec<FieldMeta> {
        let node = self
            .doc
            .descendants()
            .find(|n| n.has_tag_name("composite") && n.attribute("name") == Some(name))
            .unwrap_or_else(|| panic!("composite {name} in XML"));
        let mut offset = 0;
        let mut fields = Vec::new();
        for child in node.children().filter(|n| n.is_element()) {
            let type_name = match child.tag_name().name() {
                "type" => child.attribute("primitiveType").unwrap(),
                "ref" => child.attribute("type").unwrap(),
                other => panic!("unexpected <{other}> in composite {name}"),
            };
            let length = child.attribute("length").map_or(1, |l| l.parse().unwrap());
            let (size, rust_type) = if child.tag_name().name() == "type" {
                (primitive_size(type_name) * length, rust_type_for(type_name, length))
            } else {
                self.type_size_and_rust(type_name)
            };
            if let Some(explicit) = child.attribute("offset") {
                offset = explicit.parse().unwrap();
            }
            fields.push(FieldMeta {
                name: leak(camel_to_snake(child.attribute("name").unwrap())),
                offset,
                size,
                rust_type: leak(rust_type),
            });
            offset += size;
        }
        fields
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn assert_fields_match(what: &str, xml: &[FieldMeta], rust: &[FieldMeta]) {
    assert_eq!(
        xml.iter().map(|f| f.name).collect::<Vec<_>>(),
        rust.iter().map(|f| f.name).collect::<Vec<_>>(),
        "{what}: field names/order differ between XML and Rust"
    );
    for (x, r) in xml.iter().zip(rust) {
        assert_eq!(x.offset, r.offset, "{what}.{}: offset", x.name);
        assert_eq!(x.size, r.size, "{what}.{}: size", x.name);
        assert_eq!(x.rust_type, r.rust_type.replace(' ', "").replace(";", "; "), "{what}.{}: type", x.name);
    }
}

#[test]
fn composites_match_the_schema() {
    let schema = Schema::parse(ledgerbus_codec::SCHEMA_XML);
    assert_fields_match("messageHeader", &schema.composite_fields("messageHeader"), MessageHeader::FIELDS);
    assert_fields_match("Id128", &schema.composite_fields("Id128"), Id128::FIELDS);
    assert_fields_match("PacketHeader", &schema.composite_fields("PacketHeader"), PacketHeader::FIELDS);
    assert_eq!(PacketHeader::SIZE, ledgerbus_codec::PACKET_HEADER_SIZE);
}

#[test]
fn schema_header_attributes_match_the_constants() {
    let schema = Schema::parse(ledgerbus_codec::SCHEMA_XML);
    let root = schema.doc.root_element();
    assert_eq!(root.attribute("id").unwrap().parse::<u16>().unwrap(), ledgerbus_codec::SCHEMA_ID);
    assert_eq!(root.attribute("version").unwrap().parse::<u16>().unwrap(), ledgerbus_codec::SCHEMA_VERSION);
    assert_eq!(root.attribute("byteOrder"), Some("littleEndian"));
}

#[test]
fn every_message_matches_the_schema() {
    let schema = Schema::parse(ledgerbus_codec::SCHEMA_XML);
    let xml_messages: Vec<_> = schema.doc.descendants().filter(|n| n.has_tag_name("message")).collect();
    assert_eq!(xml_messages.len(), MESSAGES.len(), "XML and Rust know a different number of messages");
    for node in xml_messages {
        let name = node.attribute("name").unwrap();
        let rust = MESSAGES
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("message {name} is in the XML but not in codec::messages::MESSAGES"));
        let id: u16 = node.attribute("id").unwrap().parse().unwrap();
        let block_length: u16 = node
            .attribute("blockLength")
            .unwrap_or_else(|| panic!("{name} must declare blockLength"))
            .parse()
            .unwrap();
        assert_eq!(id, rust.template_id, "{name}: template id");
        assert_eq!(block_length, rust.block_length, "{name}: blockLength");
        let mut xml_fields = Vec::new();
        for field in node.children().filter(|n| n.is_element()) {
            assert_eq!(field.tag_name().name(), "field", "{name}: only fixed fields (no groups/data)");
            let field_name = field.attribute("name").unwrap();
            let offset: usize = field
                .attribute("offset")
                .unwrap_or_else(|| panic!("{name}.{field_name} must declare an offset"))
                .parse()
                .unwrap();
            let (size, rust_type) = schema.type_size_and_rust(field.attribute("type").unwrap());
            assert!(offset + size <= usize::from(block_length), "{name}.{field_name} overruns the block");
            xml_fields.push(FieldMeta {
                name: leak(camel_to_snake(field_name)),
                offset,
                size,
                rust_type: leak(rust_type),
            });
        }
        assert_fields_match(name, &xml_fields, rust.fields);
        // Fields past the first version's block are marked with the version that
        // added them, and the reader accepts exactly the first version's block.
        for field in node.children().filter(|n| n.is_element()) {
            let offset: usize = field.attribute("offset").unwrap().parse().unwrap();
            let added = offset >= usize::from(rust.min_block_length);
            let message_added = node.attribute("sinceVersion").is_some();
            assert_eq!(
                field.attribute("sinceVersion").is_some(),
                added && !message_added,
                "{name}.{}: sinceVersion must mark exactly the fields added after the first block",
                field.attribute("name").unwrap()
            );
        }
        // No two fields overlap and the fields tile the block without gaps.
        let covered: usize = rust.fields.iter().map(|f| f.size).sum();
        assert_eq!(
            covered,
            usize::from(block_length),
            "{name}: fields must tile the block (declare padding)"
        );
    }
}

fn enum_values(schema: &Schema<'_>, name: &str) -> Vec<(String, u64)> {
    let node = schema
        .doc
        .descendants()
        .find(|n| n.has_tag_name("enum") && n.attribute("name") == Some(name))
        .unwrap_or_else(|| panic!("enum {name}"));
    node.children()
        .filter(|n| n.has_tag_name("validValue"))
        .map(|v| (v.attribute("name").unwrap().to_string(), v.text().unwrap().trim().parse().unwrap()))
        .collect()
}

#[test]
fn enums_match_the_schema() {
    let schema = Schema::parse(ledgerbus_codec::SCHEMA_XML);
    let rust: Vec<(String, u64)> =
        ResultCode::ALL.iter().map(|(code, name)| (name.to_string(), u64::from(code.to_wire()))).collect();
    assert_eq!(enum_values(&schema, "ResultCode"), rust);
    let rust: Vec<(String, u64)> =
        PacketKind::ALL.iter().map(|(kind, name)| (name.to_string(), u64::from(kind.to_wire()))).collect();
    assert_eq!(enum_values(&schema, "PacketKind"), rust);
}
