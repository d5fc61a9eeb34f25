//! The command line's generated documents: the version line carries the
//! git commit, and the completions of every shell and the man pages mention
//! every visible subcommand and flag (including ones added later: the check
//! walks the clap definition itself; see `hoist_net::docs::check_documents`).

use super::Cli;
use clap::CommandFactory;

#[test]
fn the_documents_name_the_commit_and_mention_every_flag() {
    hoist_net::docs::check_documents(Cli::command);
}
