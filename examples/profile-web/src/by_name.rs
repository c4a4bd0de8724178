//! [`ByName`]: the in-page monitor's small maps. Plain Rust, so its tests
//! run natively.

/// A map from names to `V` in name order: a vector searched by halves. The
/// page keeps a few dozen names; as `BTreeMap`s, its maps put 15 KB more
/// B-tree code in the page's wasm (2 KB over the wire) than this.
#[derive(Debug)]
pub(crate) struct ByName<V>(Vec<(String, V)>);

impl<V> Default for ByName<V> {
    fn default() -> Self {
        ByName(Vec::new())
    }
}

impl<V> ByName<V> {
    /// Where `name` is (`Ok`), or where it would go (`Err`).
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&V> {
        let i = self.find(name).ok()?;
        Some(&self.0[i].1)
    }

    /// The value for `name`, where `make()` is put first if it has none.
    pub(crate) fn get_or(&mut self, name: &str, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(name) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (name.to_owned(), make()));
                i
            }
        };
        &mut self.0[i].1
    }

    /// `value` for `name`, in place of the one it had.
    pub(crate) fn insert(&mut self, name: &str, value: V) {
        match self.find(name) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name.to_owned(), value)),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_sorted_and_each_has_one_value() {
        let mut m = ByName::default();
        for name in [
            "network",
            "cache_api",
            "memory",
            "network",
            "indexed_db",
            "memory",
        ] {
            *m.get_or(name, || 0) += 1;
        }
        let all: Vec<(&str, u32)> = m.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            all,
            [
                ("cache_api", 1),
                ("indexed_db", 1),
                ("memory", 2),
                ("network", 2)
            ]
        );
        assert_eq!(m.get("memory"), Some(&2));
        assert_eq!(m.get("local_storage"), None);
        m.clear();
        assert_eq!(m.iter().count(), 0);
        assert_eq!(m.get("memory"), None);
    }

    #[test]
    fn get_or_makes_a_value_only_for_a_new_name() {
        let mut m = ByName::default();
        let mut made = 0;
        for _ in 0..3 {
            m.get_or("user 7", || {
                made += 1;
                "first".to_owned()
            });
        }
        *m.get_or("user 7", || unreachable!("user 7 is there")) = "last".to_owned();
        assert_eq!(made, 1);
        assert_eq!(m.get("user 7").map(String::as_str), Some("last"));
    }

    #[test]
    fn insert_replaces_a_value_and_keeps_names_sorted() {
        let mut m = ByName::default();
        for (name, v) in [("user 9", 1), ("user 10", 2), ("user 9", 3), ("user 1", 4)] {
            m.insert(name, v);
        }
        let all: Vec<(&str, i32)> = m.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(all, [("user 1", 4), ("user 10", 2), ("user 9", 3)]);
    }
}
