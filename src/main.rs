//! `chat-server`: parse the command line, load the settings, run.

use clap::Parser;

use chat_server::cli::{self, Cli};
use chat_server::config::Settings;

fn main() {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("chat-server: {e}");
            std::process::exit(2);
        }
    };
    let outcome = actix_web::rt::System::new().block_on(cli::run(cli, settings));
    if let Err(e) = outcome {
        eprintln!("chat-server: {e}");
        std::process::exit(e.exit_code());
    }
}
