//! libpq's password file (`~/.pgpass`, `PGPASSFILE`): `hostname:port:database:username:password`
//! per line, `*` matching anything, `\:` and `\\` escaped, the first matching line winning.

/// The password `text` gives for this server, database and user.
pub fn lookup(text: &str, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    // libpq matches "localhost" for a connection over the default socket directory too.
    let wanted = [host, port.as_str(), dbname, user];
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(fields)
        .find(|f| {
            f[..4].iter().zip(wanted).all(|(field, want)| {
                field == "*" || field == want || (field == "localhost" && want.starts_with('/'))
            })
        })
        .map(|mut f| f.swap_remove(4))
}

/// The five fields of a line, unescaped; `None` for a line that has not five.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut()?.push(chars.next()?),
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut()?.push(c),
        }
    }
    (out.len() == 5).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    db.example:5432:shop:app:first\n\
                    *:5432:*:app:p\\:ass\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            lookup(text, "db.example", 5432, "shop", "app").as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup(text, "other", 5432, "x", "app").as_deref(),
            Some("p:ass\\word")
        );
        assert_eq!(
            lookup(text, "other", 6543, "x", "bob").as_deref(),
            Some("fallback")
        );
        assert_eq!(lookup("a:b:c\n", "a", 1, "c", "d"), None);
        assert_eq!(
            lookup(
                "localhost:5432:*:app:sock\n",
                "/run/postgresql",
                5432,
                "x",
                "app"
            )
            .as_deref(),
            Some("sock")
        );
    }
}
