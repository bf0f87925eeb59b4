//! Whole-file content classification from the first bytes of a file: magic numbers checked
//! against their header structure, then text heuristics, then a byte-entropy estimate. Names
//! are never consulted: a file is what its bytes say.
//!
//! Invariants: `classify_file` never fails and never panics; it examines at most `MAX_HEAD`
//! bytes, allocates nothing in proportion to its input, and is deterministic. Magic numbers
//! made of printable characters ("GIF89a", "BM", "P6", "MZ", ...) only count when the header
//! after them is plausible, so a text file that happens to start with them stays text.

use super::{classify_block, is_zero, ContentClass};

/// Bytes of the head examined at most; callers should pass at least 4 KiB when they have it.
pub const MAX_HEAD: usize = 64 << 10;

/// Classify a file from its first bytes (`head`) and its total length (`len`).
pub fn classify_file(head: &[u8], len: u64) -> ContentClass {
    let head = &head[..head.len().min(MAX_HEAD)];
    if len == 0 || is_zero(head) {
        return ContentClass::Zero;
    }
    if let Some(c) = by_magic(head, len) {
        return c;
    }
    if let Some(c) = by_text(head) {
        return c;
    }
    match classify_block(head) {
        // Mostly printable but not UTF-8 (Latin-1 prose, say).
        ContentClass::Text => ContentClass::Text,
        ContentClass::Incompressible => ContentClass::Incompressible,
        _ => ContentClass::Binary,
    }
}

fn at(d: &[u8], off: usize, magic: &[u8]) -> bool {
    d.get(off..off + magic.len()) == Some(magic)
}
fn le16(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off + 2)?.try_into().ok()?))
}
fn le32(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off + 4)?.try_into().ok()?))
}
fn be32(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(off..off + 4)?.try_into().ok()?))
}

fn by_magic(d: &[u8], len: u64) -> Option<ContentClass> {
    use ContentClass as C;
    // Binary magics: no text file starts with these bytes.
    let binary: &[(&[u8], ContentClass)] = &[
        (b"\xff\xd8\xff", C::Jpeg),
        (b"\x89PNG\r\n\x1a\n", C::Png),
        (b"\x1f\x8b\x08", C::Gzip),
        (b"PK\x03\x04", C::Zip),
        (b"PK\x05\x06", C::Zip), // empty archive
        (b"PK\x07\x08", C::Zip), // spanned archive
        (b"\x7fELF", C::Elf),
        (b"SQLite format 3\0", C::Sqlite),
        (b"\x28\xb5\x2f\xfd", C::Zstd),
        (b"\xfd7zXZ\0", C::Xz),
        (b"\x1a\x45\xdf\xa3", C::Webm),
        (b"II*\0", C::Tiff),
        (b"MM\0*", C::Tiff),
        (b"%PDF-", C::Pdf),
        (b"!<arch>\n", C::Ar),
    ];
    for (magic, class) in binary {
        if d.starts_with(magic) {
            return Some(*class);
        }
    }
    if d.starts_with(b"RIFF") && d.len() >= 12 {
        match &d[8..12] {
            b"WAVE" => return Some(C::Wav),
            b"WEBP" => return Some(C::Webp),
            _ => {}
        }
    }
    if d.starts_with(b"FORM") && (at(d, 8, b"AIFF") || at(d, 8, b"AIFC")) {
        return Some(C::Aiff);
    }
    if (d.starts_with(b"GIF87a") || d.starts_with(b"GIF89a")) && gif_plausible(d) {
        return Some(C::Gif);
    }
    // ISO BMFF: a box size, then "ftyp" and a brand of printable characters.
    if at(d, 4, b"ftyp")
        && be32(d, 0).is_some_and(|n| (8..=4096).contains(&n))
        && d.get(8..12)
            .is_some_and(|b| b.iter().all(|c| c.is_ascii_graphic() || *c == b' '))
    {
        return Some(C::Mp4);
    }
    if d.starts_with(b"BZh")
        && d.get(3).is_some_and(|c| (b'1'..=b'9').contains(c))
        && at(d, 4, b"\x31\x41\x59\x26\x53\x59")
    {
        return Some(C::Bzip2);
    }
    if d.starts_with(b"BM") && bmp_plausible(d, len) {
        return Some(C::Bmp);
    }
    if d.starts_with(b"MZ") && pe_plausible(d) {
        return Some(C::Pe);
    }
    if pnm_plausible(d) {
        return Some(C::Pnm);
    }
    None
}

/// Logical screen size non-zero and the reserved aspect byte sane: "GIF89a" starting a
/// sentence gives letters there, and a sentence continues with printable bytes only.
fn gif_plausible(d: &[u8]) -> bool {
    let (Some(w), Some(h)) = (le16(d, 6), le16(d, 8)) else {
        return d.len() <= 10; // truncated right after the magic: trust it
    };
    w > 0 && h > 0 && !printable_prefix(d, 64)
}

/// BMP: reserved fields zero and a known DIB header size; the size field must agree with the
/// file length when it is set (some writers leave it zero).
fn bmp_plausible(d: &[u8], len: u64) -> bool {
    let (Some(size), Some(reserved), Some(dib)) = (le32(d, 2), le32(d, 6), le32(d, 14)) else {
        return false;
    };
    reserved == 0
        && [12, 40, 52, 56, 64, 108, 124].contains(&dib)
        && (size == 0 || u64::from(size) == len)
}

/// PE: the DOS header points at a "PE\0\0" signature within the head.
fn pe_plausible(d: &[u8]) -> bool {
    le32(d, 0x3c)
        .map(|off| at(d, off as usize, b"PE\0\0"))
        .unwrap_or(false)
}

/// Netpbm: "P1".."P7", whitespace, then a decimal width (P7: a "WIDTH"/comment header line).
fn pnm_plausible(d: &[u8]) -> bool {
    if d.len() < 3 || d[0] != b'P' || !(b'1'..=b'7').contains(&d[1]) {
        return false;
    }
    if d[1] == b'7' {
        return d[2] == b'\n';
    }
    if !d[2].is_ascii_whitespace() {
        return false;
    }
    // Skip whitespace and comment lines, then expect width and height as digits.
    let mut i = 2;
    let mut numbers = 0;
    while i < d.len().min(512) && numbers < 2 {
        match d[i] {
            c if c.is_ascii_whitespace() => i += 1,
            b'#' => {
                while i < d.len() && d[i] != b'\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() => {
                while i < d.len() && d[i].is_ascii_digit() {
                    i += 1;
                }
                numbers += 1;
                if d.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    numbers == 2
}

/// True if the first `n` bytes (or all of a shorter head) are printable ASCII text.
fn printable_prefix(d: &[u8], n: usize) -> bool {
    d[..d.len().min(n)]
        .iter()
        .all(|&c| (0x20..0x7f).contains(&c) || matches!(c, b'\n' | b'\r' | b'\t'))
}

/// Text classes, for heads that are valid UTF-8 with (almost) no control bytes.
fn by_text(d: &[u8]) -> Option<ContentClass> {
    let text = match std::str::from_utf8(d) {
        Ok(s) => s,
        // A head cut in the middle of a multi-byte character is still text.
        Err(e) if e.error_len().is_none() && d.len() - e.valid_up_to() < 4 => {
            std::str::from_utf8(&d[..e.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    let controls = text
        .bytes()
        .filter(|&c| c < 0x20 && !matches!(c, b'\n' | b'\r' | b'\t' | 0x0c | 0x1b))
        .count();
    if text.contains('\0') || controls * 100 > text.len() {
        return None;
    }
    // The last line may be cut by the head boundary; judge on complete lines when there are.
    let complete = match text.rfind('\n') {
        Some(i) if i > 0 => &text[..i],
        _ => text,
    };
    let lines: Vec<&str> = complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(400)
        .collect();
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if looks_json(t, &lines) {
        return Some(ContentClass::Json);
    }
    if looks_xml(t) {
        return Some(ContentClass::Xml);
    }
    if looks_log(&lines) {
        return Some(ContentClass::Log);
    }
    if looks_csv(&lines) {
        return Some(ContentClass::Csv);
    }
    if looks_source(t, &lines) {
        return Some(ContentClass::Source);
    }
    Some(ContentClass::Text)
}

/// A JSON document (object or array) or JSON lines: checked by a small tokenizer that accepts
/// any prefix of valid JSON, since the head may end anywhere.
fn looks_json(t: &str, lines: &[&str]) -> bool {
    if !(t.starts_with('{') || t.starts_with('[')) {
        return false;
    }
    if json_prefix_ok(t.as_bytes()) {
        return true;
    }
    // JSON lines: every complete line is a JSON object on its own.
    lines.len() >= 2
        && lines.iter().all(|l| {
            let l = l.trim();
            l.starts_with('{') && l.ends_with('}') && json_prefix_ok(l.as_bytes())
        })
}

/// Whether `d` is a prefix of one valid JSON value (trailing whitespace allowed). A lenient
/// grammar check: containers, strings with escapes, and scalar tokens made of valid characters.
fn json_prefix_ok(d: &[u8]) -> bool {
    // Expect: what may come next. Stack of containers: b'{' or b'['.
    #[derive(PartialEq, Clone, Copy)]
    enum Want {
        Value,
        ValueOrClose,
        Key,
        KeyOrClose,
        Colon,
        CommaOrClose,
        End,
    }
    let mut stack: Vec<u8> = Vec::new();
    let mut want = Want::Value;
    let mut i = 0;
    let mut tokens = 0;
    while i < d.len() {
        let c = d[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let after_value = |stack: &Vec<u8>| {
            if stack.is_empty() {
                Want::End
            } else {
                Want::CommaOrClose
            }
        };
        match (want, c) {
            (Want::Value | Want::ValueOrClose, b'{') => {
                stack.push(b'{');
                want = Want::KeyOrClose;
            }
            (Want::Value | Want::ValueOrClose, b'[') => {
                stack.push(b'[');
                want = Want::ValueOrClose;
            }
            (Want::KeyOrClose | Want::CommaOrClose, b'}') if stack.last() == Some(&b'{') => {
                stack.pop();
                want = after_value(&stack);
            }
            (Want::ValueOrClose | Want::CommaOrClose, b']') if stack.last() == Some(&b'[') => {
                stack.pop();
                want = after_value(&stack);
            }
            (Want::CommaOrClose, b',') => {
                want = if stack.last() == Some(&b'{') {
                    Want::Key
                } else {
                    Want::Value
                };
            }
            (Want::Colon, b':') => want = Want::Value,
            (Want::Value | Want::ValueOrClose | Want::Key | Want::KeyOrClose, b'"') => {
                i += 1;
                while i < d.len() && d[i] != b'"' {
                    if d[i] == b'\\' {
                        i += 1;
                    } else if d[i] < 0x20 {
                        return false;
                    }
                    i += 1;
                }
                if i >= d.len() {
                    return tokens > 0; // cut inside a string
                }
                want = if matches!(want, Want::Key | Want::KeyOrClose) {
                    Want::Colon
                } else {
                    after_value(&stack)
                };
            }
            (Want::Value | Want::ValueOrClose, b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                let start = i;
                while i < d.len() && (d[i].is_ascii_alphanumeric() || b"+-.".contains(&d[i])) {
                    i += 1;
                }
                let tok = &d[start..i];
                let ok = if i == d.len() {
                    true // may be cut
                } else {
                    matches!(tok, b"true" | b"false" | b"null")
                        || (tok[0] == b'-' || tok[0].is_ascii_digit())
                            && tok
                                .iter()
                                .all(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
                };
                if !ok {
                    return false;
                }
                tokens += 1;
                want = after_value(&stack);
                continue;
            }
            _ => return false,
        }
        tokens += 1;
        i += 1;
    }
    tokens >= 2
}

fn looks_xml(t: &str) -> bool {
    if t.starts_with("<?xml") {
        return true;
    }
    let b = t.as_bytes();
    b.len() > 1
        && b[0] == b'<'
        && (b[1].is_ascii_alphabetic() || b[1] == b'!')
        && (t.contains("</") || t.contains("/>"))
}

/// Most lines carry a timestamp near their start.
fn looks_log(lines: &[&str]) -> bool {
    if lines.len() < 3 {
        return false;
    }
    let stamped = lines.iter().filter(|l| has_timestamp(l)).count();
    stamped * 10 >= lines.len() * 7
}

fn has_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    let b = &b[..b.len().min(48)];
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    // ISO date "2024-01-31", clock "12:34:56", or a dmesg "[ 12.345678]" prefix.
    (0..b.len()).any(|i| {
        let iso = (0..4).all(|k| digit(i + k))
            && b.get(i + 4) == Some(&b'-')
            && digit(i + 5)
            && digit(i + 6)
            && b.get(i + 7) == Some(&b'-')
            && digit(i + 8)
            && digit(i + 9);
        let clock = digit(i)
            && digit(i + 1)
            && b.get(i + 2) == Some(&b':')
            && digit(i + 3)
            && digit(i + 4)
            && b.get(i + 5) == Some(&b':')
            && digit(i + 6)
            && digit(i + 7);
        iso || clock
    }) || (b.first() == Some(&b'[')
        && b.iter()
            .skip(1)
            .take_while(|c| **c != b']')
            .all(|c| c.is_ascii_digit() || *c == b'.' || *c == b' ')
        && b.contains(&b']'))
}

/// Delimited records: at least 3 lines with the same, non-zero number of separators outside
/// quotes, for one of the usual separators.
fn looks_csv(lines: &[&str]) -> bool {
    if lines.len() < 3 {
        return false;
    }
    // Words per line do not depend on the separator: counted once, and only for a separator
    // that passes the cheaper tests first (this runs on every small file written).
    let words = std::cell::OnceCell::new();
    [b',', b'\t', b';', b'|'].iter().any(|&sep| {
        let count = |l: &str| {
            let mut in_q = false;
            // Leading tabs are indentation, not empty fields.
            l.trim_start_matches('\t')
                .bytes()
                .filter(|&c| {
                    if c == b'"' {
                        in_q = !in_q;
                    }
                    c == sep && !in_q
                })
                .count()
        };
        let first = count(lines[0]);
        let fields = lines.len() * (first + 1);
        // Prose with a comma per line has the same count too; records have short fields.
        let words = || {
            *words.get_or_init(|| {
                lines
                    .iter()
                    .map(|l| l.split_whitespace().count())
                    .sum::<usize>()
            })
        };
        first > 0
            && lines.iter().filter(|l| count(l) == first).count() * 10 >= lines.len() * 9
            && words() <= fields * 4
    })
}

/// Program text: a shebang, or many lines that end or start the way code does.
fn looks_source(t: &str, lines: &[&str]) -> bool {
    if t.starts_with("#!") {
        return true;
    }
    if lines.len() < 3 {
        return false;
    }
    const STARTS: &[&str] = &[
        "import ",
        "from ",
        "def ",
        "class ",
        "#include",
        "#define",
        "#if",
        "#endif",
        "fn ",
        "pub ",
        "use ",
        "let ",
        "const ",
        "var ",
        "function ",
        "package ",
        "return",
        "if ",
        "if(",
        "for ",
        "for(",
        "while ",
        "} else",
        "//",
        "/*",
        "* ",
        "*/",
        "@",
        "sub ",
        "my ",
        "elif ",
        "else:",
        "try:",
        "except",
        "static ",
        "struct ",
        "enum ",
        "impl ",
        "namespace ",
        "template",
        "public ",
        "private ",
        "module ",
        "require",
        "local ",
        "end",
    ];
    let codey = lines
        .iter()
        .filter(|l| {
            let s = l.trim();
            s.ends_with(';')
                || s.ends_with('{')
                || s.ends_with('}')
                || s.ends_with("):")
                || s.ends_with(',') && s.contains('(')
                || STARTS.iter().any(|k| s.starts_with(k))
        })
        .count();
    // Definitions and imports at column 0 are rare in prose (code examples in documents are
    // indented) and common in code even when long docstrings or comments dominate.
    let strong = lines.iter().filter(|l| is_definition(l)).count();
    // A file that opens with a definition (imports, #include) is code however much
    // documentation follows; a document opens with a title or prose.
    let opens_with_code = lines.first().is_some_and(|l| is_definition(l));
    codey * 100 >= lines.len() * 35
        || (strong >= 2 && (opens_with_code || strong * 100 >= lines.len() * 3))
}

fn is_definition(line: &str) -> bool {
    // Only unindented lines count: callers pass raw lines.
    if line.starts_with(char::is_whitespace) {
        return false;
    }
    let words: Vec<&str> = line.split_whitespace().take(8).collect();
    let ident = |w: Option<&&str>| {
        w.is_some_and(|w| {
            w.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        })
    };
    let call_like = |w: Option<&&str>| w.is_some_and(|w| w.contains('(') || w.ends_with(':'));
    match words.first().copied() {
        Some("import") => ident(words.get(1)) && words.len() <= 6 && !line.ends_with('.'),
        Some("from") => words.get(2) == Some(&"import"),
        Some("def" | "fn" | "func" | "function") => call_like(words.get(1)),
        Some("class") => ident(words.get(1)) && (line.ends_with(':') || line.ends_with('{')),
        Some("#include" | "#define" | "#ifndef" | "#pragma") => true,
        Some("package") => words.len() == 2,
        Some("use") => line.ends_with(';'),
        Some("sub") => line.ends_with('{'),
        Some("pub" | "impl" | "struct" | "enum" | "typedef" | "static" | "const") => {
            line.ends_with('{') || line.ends_with(';')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testdata::{sample, samples};
    use ContentClass as C;

    fn class_of(b: &[u8]) -> ContentClass {
        classify_file(b, b.len() as u64)
    }

    #[test]
    fn real_samples_get_their_class() {
        for (dir, want) in [
            ("jpeg", C::Jpeg),
            ("png", C::Png),
            ("gzip", C::Gzip),
            ("zip", C::Zip),
            ("wav", C::Wav),
            ("elf", C::Elf),
            ("json", C::Json),
            ("source", C::Source),
            ("text", C::Text),
        ] {
            for (name, b) in samples(dir) {
                assert_eq!(class_of(&b), want, "{dir}/{name}");
                // Heads of the usual size give the same answer.
                let head = &b[..b.len().min(4096)];
                assert_eq!(
                    classify_file(head, b.len() as u64),
                    want,
                    "{dir}/{name} head"
                );
            }
        }
    }

    #[test]
    fn this_crates_sources_are_source_and_its_manifest_text_or_source() {
        let me = include_bytes!("magic.rs");
        assert_eq!(class_of(me), C::Source);
        // Python whose head is mostly docstring (made here: a real-looking module layout).
        let py = format!(
            "\"\"\"Filters.\n\n{}\"\"\"\n\nimport numpy as np\nfrom scipy import ndimage\n\n\
             def gaussian(image, sigma=1.0):\n    return ndimage.gaussian_filter(image, sigma)\n",
            "    sigma : scalar or sequence of scalars, optional, the deviation.\n".repeat(40)
        );
        assert_eq!(class_of(py.as_bytes()), C::Source);
        let readme = include_bytes!("../../tests/data/README.md");
        assert_eq!(class_of(readme), C::Text);
    }

    #[test]
    fn misleading_and_damaged_inputs() {
        // All variants below are made here at run time from real samples or literals.
        // JPEG with trailing garbage: still a JPEG.
        let mut j = sample("jpeg");
        j.extend_from_slice(&[0x55; 1000]);
        assert_eq!(class_of(&j), C::Jpeg);
        // Truncated PNG (header only) is still a PNG; 4 bytes of its magic are not.
        let png = sample("png");
        assert_eq!(classify_file(&png[..40], png.len() as u64), C::Png);
        assert_ne!(class_of(&png[..4]), C::Png);
        // Text that starts with printable magics stays text.
        for s in [
            "GIF89a is a format for pictures that are animated and small.\n",
            "BMW and MZ are two makers of motorcycles, people say.\n",
            "P6 was the name of the project, and the team liked it.\n",
            "MZ files are DOS executables; this sentence is not one.\n",
        ] {
            let text = s.repeat(20);
            assert_eq!(class_of(text.as_bytes()), C::Text, "{s}");
        }
        // A ZIP signature buried inside text does not matter; at the start it does.
        let mut z = b"PK\x03\x04".to_vec();
        z.extend_from_slice(&sample("text")[..2000]);
        assert_eq!(class_of(&z), C::Zip);
        // Random bytes: incompressible. Zeros: zero. Nothing: zero.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(class_of(&noise), C::Incompressible);
        assert_eq!(class_of(&[0u8; 9000]), C::Zero);
        assert_eq!(classify_file(&[], 0), C::Zero);
        // A gzip stream cut short still classifies by its header.
        let g = sample("gzip");
        assert_eq!(class_of(&g[..10]), C::Gzip);
    }

    #[test]
    fn text_flavours() {
        let log = "2024-03-01 12:00:01 INFO started\n2024-03-01 12:00:02 WARN slow disk\n\
                   2024-03-01 12:00:05 INFO done\nMar  1 12:00:09 host sshd[1]: accepted\n";
        assert_eq!(class_of(log.as_bytes()), C::Log);
        let csv = "id,name,score\n1,ann,3.5\n2,\"bob, jr\",4\n3,cy,5\n";
        assert_eq!(class_of(csv.as_bytes()), C::Csv);
        let xml = "<?xml version=\"1.0\"?>\n<a><b>x</b></a>\n";
        assert_eq!(class_of(xml.as_bytes()), C::Xml);
        let jsonl = "{\"a\": 1}\n{\"a\": 2, \"b\": [true, null]}\n";
        assert_eq!(class_of(jsonl.as_bytes()), C::Json);
        // Brackets alone are not JSON: an INI-like section header, then prose.
        let ini = "[section]\nkey = value\nother = thing here\n";
        assert_ne!(class_of(ini.as_bytes()), C::Json);
        // JSON cut mid-string (a head boundary) is still JSON.
        let json = sample("json");
        assert_eq!(classify_file(&json[..777], json.len() as u64), C::Json);
    }

    #[test]
    fn magic_table() {
        let cases: &[(&[u8], ContentClass)] = &[
            (b"GIF89a\x10\x00\x10\x00\xf7\x00\x00\x01\x02\x03", C::Gif),
            (b"RIFF\x24\x00\x00\x00WEBPVP8 ", C::Webp),
            (b"FORM\x00\x00\x10\x00AIFFCOMM", C::Aiff),
            (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", C::Pdf),
            (b"II*\x00\x08\x00\x00\x00", C::Tiff),
            (b"SQLite format 3\x00\x10\x00", C::Sqlite),
            (b"\x28\xb5\x2f\xfd\x24\x00", C::Zstd),
            (b"\xfd7zXZ\x00\x00\x04", C::Xz),
            (b"BZh91AY&SY\x01\x02", C::Bzip2),
            (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", C::Mp4),
            (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", C::Webm),
            (b"P6\n# comment\n640 480\n255\n\x00\x01", C::Pnm),
            (b"!<arch>\ndebian-binary   ", C::Ar),
        ];
        for (bytes, want) in cases {
            assert_eq!(class_of(bytes), *want, "{bytes:?}");
        }
        // BMP: header size field must match the length.
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&64u32.to_le_bytes());
        bmp.extend_from_slice(&[0; 4]);
        bmp.extend_from_slice(&54u32.to_le_bytes());
        bmp.extend_from_slice(&40u32.to_le_bytes());
        bmp.resize(64, 1);
        assert_eq!(class_of(&bmp), C::Bmp);
        assert_ne!(classify_file(&bmp, 65), C::Bmp);
        // PE: MZ stub pointing at a PE signature.
        let mut pe = vec![0u8; 0x100];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        assert_eq!(class_of(&pe), C::Pe);
        pe[0x3c] = 0x90;
        assert_ne!(class_of(&pe), C::Pe);
    }
}
