#![forbid(unsafe_code)]

use clap::Parser as _;

#[tokio::main]
async fn main() {
    let cli = cellule_plugin::cli::Cli::parse();
    if let Err(error) = cellule_plugin::run(cli).await {
        // `{:#}`: the whole chain on one line, the cause last.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
