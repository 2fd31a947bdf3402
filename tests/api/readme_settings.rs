// The README's settings table, read by the tests that hold the code to it.
// Shared by `settings.rs` (defaults, through `include!`) and
// `tests/api/cli.rs` (flags and variables); plain comments, because an
// included file may not carry inner doc comments.

/// One row: `| `--flag` | `CONSENTD_VAR` | default |`.
#[derive(Debug, Clone)]
#[allow(dead_code)] // settings.rs reads no variables
pub struct Row {
    pub flag: String,
    pub variable: String,
    pub default: String,
}

/// Every row of the table under "| flag | variable | default |".
pub fn rows(readme: &str) -> Vec<Row> {
    let mut lines = readme.lines().skip_while(|l| !l.starts_with("| flag | variable |"));
    lines.next();
    lines.next(); // the |---| line
    let rows: Vec<Row> = lines
        .take_while(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 3, "README settings row: {line}");
            Row {
                flag: cells[0].trim_matches('`').to_string(),
                variable: cells[1].trim_matches('`').to_string(),
                default: cells[2].to_string(),
            }
        })
        .collect();
    assert!(rows.len() > 10, "the README settings table was not found");
    rows
}

#[allow(dead_code)] // tests/api/cli.rs reads no defaults
/// The fixed default a row documents, as clap would print it; `None` when
/// the row describes a default that is not a fixed value (chosen or made at
/// start, or derived from another setting such as `http://HTTP_ADDR`).
pub fn documented_default(row: &Row) -> Option<String> {
    let text = row.default.as_str();
    if let Some(quoted) = text.strip_prefix('`') {
        let value = &quoted[..quoted.find('`').expect("a closing backtick")];
        let derived = value.contains("HTTP_ADDR");
        return (!derived).then(|| value.to_string());
    }
    if text.starts_with("off") {
        return Some("false".into());
    }
    let number: String = text.chars().take_while(char::is_ascii_digit).collect();
    (!number.is_empty()).then_some(number)
}
