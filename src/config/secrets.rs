//! Secret files (passwords, per-user credentials, keys): refused unless only their owner can read
//! them (mode 0600), and never quoted in an error: a bad line is named by its number.

use std::path::Path;

/// Reads a secret file, refusing one that others can read. The secret never enters an error.
pub fn read_secret(path: &Path, key: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{key} {} is readable by group or others (mode {mode:o}); run: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
    }
    let _ = meta;
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        return Err(format!("{key} {} is empty", path.display()));
    }
    Ok(secret)
}

/// Reads a per-user credentials file: `user = password` lines, `#` comments. Refused unless
/// mode 0600; a bad line is named by number, never by content.
pub fn read_credentials(path: &Path) -> Result<std::collections::BTreeMap<String, String>, String> {
    let text = read_secret(path, "credentials_file")?;
    let mut users = std::collections::BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, password)) = line.split_once('=') else {
            return Err(format!(
                "credentials_file {}:{}: expected `user = password`",
                path.display(),
                i + 1
            ));
        };
        let (user, password) = (user.trim(), password.trim());
        if user.is_empty() || password.is_empty() {
            return Err(format!(
                "credentials_file {}:{}: empty user or password",
                path.display(),
                i + 1
            ));
        }
        if users
            .insert(user.to_string(), password.to_string())
            .is_some()
        {
            return Err(format!(
                "credentials_file {}:{}: user {user:?} is listed twice",
                path.display(),
                i + 1
            ));
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_errors_name_the_line_not_the_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("gs-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("users.secret");
        std::fs::write(&f, "alice = s3cret\nbob s3cret2\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_credentials(&f).unwrap_err();
        assert!(e.contains(":2:") && !e.contains("s3cret"), "{e}");
        std::fs::write(&f, "alice = s3cret\n").unwrap();
        assert_eq!(read_credentials(&f).unwrap()["alice"], "s3cret");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_credentials(&f).unwrap_err().contains("chmod 600"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
