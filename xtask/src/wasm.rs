//! Just enough of the WebAssembly binary format to undo a `wasm-opt` bug:
//! binaryen before version 110 writes every exported table as table 0
//! (WebAssembly/binaryen#4711, fixed by #4736), and Debian bookworm ships
//! binaryen 108. wasm-bindgen's module exports its `externref` table, which
//! is table 1, so without the fix the page fails at start with "function-typed
//! object must be null ... or a Wasm function object".

use std::ops::Range;

/// Reads an unsigned LEB128 at `*at`, moving `*at` past it.
fn leb(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("truncated LEB128")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("LEB128 too long".into())
}

fn usize_leb(bytes: &[u8], at: &mut usize) -> Result<usize, String> {
    usize::try_from(leb(bytes, at)?).map_err(|e| e.to_string())
}

/// The module's sections: id and the range of its contents.
fn sections(module: &[u8]) -> Result<Vec<(u8, Range<usize>)>, String> {
    if module.get(..4) != Some(b"\0asm") {
        return Err("not a WebAssembly module".into());
    }
    let mut at = 8;
    let mut out = Vec::new();
    while at < module.len() {
        let id = module[at];
        at += 1;
        let len = usize_leb(module, &mut at)?;
        let end = at.checked_add(len).filter(|&e| e <= module.len());
        let end = end.ok_or("a section runs past the end of the module")?;
        out.push((id, at..end));
        at = end;
    }
    Ok(out)
}

fn section(module: &[u8], id: u8) -> Result<Option<Range<usize>>, String> {
    Ok(sections(module)?
        .into_iter()
        .find(|(i, _)| *i == id)
        .map(|(_, r)| r))
}

/// The table section's bytes (the defined tables: their types and limits).
fn table_section(module: &[u8]) -> Result<Vec<u8>, String> {
    Ok(section(module, 4)?
        .map(|r| module[r].to_vec())
        .unwrap_or_default())
}

/// Every table export: its name and the range of its index's LEB128.
fn table_exports(module: &[u8]) -> Result<Vec<(String, Range<usize>)>, String> {
    let Some(range) = section(module, 7)? else {
        return Ok(Vec::new());
    };
    let mut at = range.start;
    let count = leb(module, &mut at)?;
    let mut out = Vec::new();
    for _ in 0..count {
        let len = usize_leb(module, &mut at)?;
        let name = module
            .get(at..at + len)
            .ok_or("an export name runs past its section")?;
        let name = String::from_utf8_lossy(name).into_owned();
        at += len;
        let kind = *module.get(at).ok_or("truncated export")?;
        at += 1;
        let start = at;
        leb(module, &mut at)?;
        if kind == 1 {
            out.push((name, start..at));
        }
    }
    if at != range.end {
        return Err("the export section does not end where it says".into());
    }
    Ok(out)
}

/// Gives every table export of `optimized` (wasm-opt's output) the index it
/// had in `original` (its input), after checking that the tables themselves
/// came through unchanged. Returns how many exports it corrected (0 with a
/// binaryen that has the fix). Fails, rather than guess, on anything else.
pub(crate) fn restore_table_exports(
    original: &[u8],
    optimized: &mut [u8],
) -> Result<usize, String> {
    if table_section(original)? != table_section(optimized)? {
        return Err("wasm-opt changed the tables; their exports cannot be checked".into());
    }
    let before = table_exports(original)?;
    let after = table_exports(optimized)?;
    if before.len() != after.len() {
        return Err(format!(
            "wasm-opt changed the table exports: {} before, {} after",
            before.len(),
            after.len()
        ));
    }
    let mut fixed = 0;
    for (name, range) in after {
        let (_, was) = before
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| format!("wasm-opt dropped the table export `{name}`"))?;
        let was = &original[was.clone()];
        if &optimized[range.clone()] != was {
            if range.len() != was.len() {
                return Err(format!(
                    "table export `{name}`: its index changed length, cannot restore it"
                ));
            }
            optimized[range].copy_from_slice(was);
            fixed += 1;
        }
    }
    Ok(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with a funcref and an externref table, exporting the second
    /// as `ext` (index byte `index`) and a function export before it.
    fn module(index: u8) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        // Table section: 2 tables, funcref min 1, externref min 4 max 8.
        m.extend([4, 8, 2, 0x70, 0, 1, 0x6f, 1, 4, 8]);
        // Export section: "f" func 0, "ext" table `index`.
        m.extend([7, 11, 2, 1, b'f', 0, 0, 3, b'e', b'x', b't', 1, index]);
        m
    }

    #[test]
    fn a_table_export_moved_to_zero_gets_its_index_back() {
        let original = module(1);
        let mut optimized = module(0);
        assert_eq!(restore_table_exports(&original, &mut optimized), Ok(1));
        assert_eq!(optimized, original);
        // Already right (binaryen 110 and later): nothing to do.
        assert_eq!(restore_table_exports(&original, &mut optimized), Ok(0));
    }

    #[test]
    fn changed_tables_are_refused() {
        let original = module(1);
        let mut optimized = module(0);
        optimized[14] = 0x70; // The second table is now a funcref table.
        assert!(restore_table_exports(&original, &mut optimized).is_err());
        assert!(restore_table_exports(b"not wasm", &mut module(0)).is_err());
    }
}
