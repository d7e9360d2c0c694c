//! Bounded records pages: every text column of a JSON records page is cut
//! to [`TEXT_MAX_CHARS`] characters by the database itself (so an old row
//! with a 30 MB `end_user` costs a page 4 KiB, not 30 MB, of memory), and a
//! cut row lists the fields cut in `truncated_fields`. Nothing is hidden:
//! the CSV export carries every value whole, and the flag says where to look.

use serde::Serialize;

use crate::ledger::{LedgerRow, COLUMNS};

/// Longest text value of a records page, in characters.
pub const TEXT_MAX_CHARS: usize = 1_024;

/// The text columns a request or an upstream can fill (the rest are ours:
/// ids, enums, currency codes).
const CUT: [&str; 12] = [
    "request_id",
    "response_id",
    "api_key_id",
    "model",
    "upstream_model",
    "service_tier",
    "unpriced_reason",
    "error_code",
    "fallback_from",
    "end_user",
    "dropped_tools",
    "client_request_id",
];

/// A records page row: the ledger row, and which of its fields were cut.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct PageRow {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub row: LedgerRow,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub truncated_fields: Vec<String>,
}

/// [`COLUMNS`] with the columns of [`CUT`] cut, plus `truncated_fields`.
pub fn columns() -> String {
    let mut out: Vec<String> = COLUMNS
        .split(',')
        .map(|column| {
            let column = column.trim();
            if CUT.contains(&column) {
                format!("left({column}, {TEXT_MAX_CHARS}) AS {column}")
            } else {
                column.to_owned()
            }
        })
        .collect();
    let flags: Vec<String> = CUT
        .iter()
        .map(|c| format!("CASE WHEN char_length({c}) > {TEXT_MAX_CHARS} THEN '{c}' END"))
        .collect();
    out.push(format!(
        "array_remove(ARRAY[{}]::text[], NULL) AS truncated_fields",
        flags.join(", ")
    ));
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cut_column_is_a_column_and_is_cut() {
        let columns = columns();
        for c in CUT {
            assert!(
                COLUMNS.split(',').any(|col| col.trim() == c),
                "{c} is not in COLUMNS"
            );
            assert!(columns.contains(&format!("left({c}, ")), "{c}");
        }
    }
}
