//! `kybctl auth new-key`: a new API key, written to a file only its owner can read, and the entry
//! for the service's key file on stdout (`>> keys.yaml`). The key itself is never printed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::exit;
use crate::service::auth::api_keys;
use crate::service::auth::scopes::Scope;

#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Make an API key: the key goes to --key-out (mode 0600, never overwritten), its hashed entry
    /// to stdout.
    #[command(after_help = "Example:
  kybctl auth new-key --client onboarding --scope merchants:read --scope merchants:write \\
      --key-out onboarding.key >> api-keys.yaml
  kubectl create secret generic kyb-api-keys --from-file=keys.yaml=api-keys.yaml")]
    NewKey {
        /// Who will hold the key (rate limits, logs and the audit trail name it).
        #[arg(long)]
        client: String,
        /// merchants:read, merchants:write, merchants:status or ops; repeat for several.
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// File to write the key to.
        #[arg(long, value_name = "FILE")]
        key_out: PathBuf,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::parse(s).ok_or_else(|| {
        let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown scope {s:?} (known: {})", known.join(", "))
    })
}

pub fn run(cmd: AuthCommand) -> u8 {
    let AuthCommand::NewKey {
        client,
        scopes,
        key_out,
    } = cmd;
    if client.trim().is_empty() {
        eprintln!("error: --client must name the key's holder");
        return exit::USAGE;
    }
    let (key, entry) = api_keys::generate(&client, &scopes);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_out)
        .and_then(|mut f| f.write_all(format!("{key}\n").as_bytes()));
    if let Err(e) = written {
        eprintln!("error: cannot write {}: {e}", key_out.display());
        return exit::USAGE;
    }
    print!(
        "{}",
        serde_yaml::to_string(&[entry]).expect("a key entry serialises")
    );
    exit::OK
}
