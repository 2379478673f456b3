//! The command line: `serve` (the default), `migrate`, and the `user` and
//! `contact` commands that replace the old backend's admin pages.

use std::io::BufRead;

use clap::{Args, Parser, Subcommand};
use entity::user;
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder};

use crate::accounts::{self, NewUser};
use crate::config::Settings;
use crate::{db, telemetry, Application};

/// Real-time chat server (REST + WebSocket).
#[derive(Debug, Parser)]
#[command(
    name = "chat-server",
    version,
    about,
    after_help = "Configuration comes from environment variables and from a .env file in the \
working directory, not from options: for example `PORT=9000 chat-server serve`. \
.env.example lists every variable.\n\n\
`serve` stays in the foreground until Ctrl-C or SIGTERM; run the other commands in a \
second terminal, with the same configuration.\n\n\
Exit codes: 0 success; 2 the command line, the configuration or the input is wrong \
(fix it and run again); 1 the operation failed (database unreachable, I/O)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP and WebSocket (the default).
    Serve,
    /// Bring the database schema up to date and exit.
    Migrate,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage conversations.
    #[command(subcommand)]
    Contact(ContactCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account (the password is prompted for, or read from stdin).
    Create(CreateUser),
    /// List accounts.
    List,
    /// Set a new password (revokes the user's tokens).
    SetPassword {
        /// The account's username.
        username: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Deactivate an account (revokes its tokens; the user cannot log in).
    Deactivate {
        /// The account's username.
        username: String,
    },
    /// Reactivate an account.
    Activate {
        /// The account's username.
        username: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateUser {
    /// Letters, digits and @.+-_, at most 150; unique up to case and look-alikes.
    pub username: String,
    /// The account's email address.
    #[arg(long, default_value = "")]
    pub email: String,
    /// Shown to contacts as "First Last".
    #[arg(long, default_value = "")]
    pub first_name: String,
    /// Shown to contacts as "First Last".
    #[arg(long, default_value = "")]
    pub last_name: String,
    /// Mark the account as staff (reported in the login answer).
    #[arg(long)]
    pub staff: bool,
    /// Mark the account as superuser (reported in the login answer).
    #[arg(long)]
    pub superuser: bool,
    #[command(flatten)]
    pub password: PasswordSource,
}

/// Passwords never come from argv (it is visible to every user of the machine).
#[derive(Debug, Args)]
pub struct PasswordSource {
    /// Read the password from the first line of standard input instead of a
    /// prompt (needed where there is no terminal: scripts, Docker, CI).
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum ContactCommand {
    /// Create the direct conversation of two users (once; again is a no-op).
    Add {
        /// One user's username.
        first: String,
        /// The other user's username.
        second: String,
    },
}

/// Why a command failed, and the process exit code for it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration: exit code 2.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Start(#[from] crate::StartError),
    #[error("{0}")]
    Database(#[from] db::DbSetupError),
    #[error("{0}")]
    Account(#[from] accounts::AccountError),
    #[error("database error: {0}")]
    Query(#[from] sea_orm::DbErr),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The one rule: 2 when the command line, the configuration or the input
    /// is wrong (the person must change something), 1 when the operation
    /// failed (the database or the disk did).
    pub fn exit_code(&self) -> i32 {
        use accounts::AccountError;
        match self {
            CliError::Config(_)
            | CliError::Start(crate::StartError::Config(_) | crate::StartError::Redis(_))
            | CliError::Usage(_)
            | CliError::Database(
                db::DbSetupError::SqliteMissing { .. } | db::DbSetupError::SqliteInUse { .. },
            )
            | CliError::Start(crate::StartError::Database(db::DbSetupError::SqliteInUse {
                ..
            })) => 2,
            CliError::Account(e) => match e {
                AccountError::Database(_) | AccountError::Hashing(_) => 1,
                _ => 2,
            },
            _ => 1,
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli, settings: Settings) -> Result<(), CliError> {
    telemetry::init(settings.server.log_format, settings.server.debug);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Migrate => {
            let db = db::connect(&settings).await?;
            let applied = db::migrate(&db, &settings.database.url()).await?;
            println!("migrations applied");
            tracing::debug!(applied, "migrations");
            Ok(())
        }
        Command::User(command) => {
            // Only `create` may make the first (empty) database: the others
            // work on accounts, which a new file has none of.
            let create = matches!(command, UserCommand::Create(_));
            user_command(&connect(&settings, create).await?, command).await
        }
        Command::Contact(ContactCommand::Add { first, second }) => {
            let db = connect(&settings, false).await?;
            let (chat, created) = accounts::add_contact(&db, &first, &second).await?;
            let verb = if created { "created" } else { "already exists" };
            println!(
                "conversation {} between {first} and {second} {verb}",
                chat.id
            );
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> Result<(), CliError> {
    let app = Application::build(settings).await?;
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Opens the database for an account command, saying which one on stderr
/// (a command run from the wrong directory would otherwise work on another
/// database without a word); an SQLite file that does not exist is created
/// only if `create`.
async fn connect(settings: &Settings, create: bool) -> Result<DatabaseConnection, CliError> {
    eprintln!("database: {}", settings.database.location());
    let db = if create {
        db::connect(settings).await?
    } else {
        db::connect_existing(settings).await?
    };
    db::migrate(&db, &settings.database.url()).await?;
    Ok(db)
}

fn read_password(source: &PasswordSource) -> Result<String, CliError> {
    if source.password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let password = line.trim_end_matches(['\n', '\r']).to_string();
        if password.is_empty() {
            return Err(CliError::Usage("no password on standard input".into()));
        }
        return Ok(password);
    }
    let no_terminal = |e: std::io::Error| {
        CliError::Usage(format!(
            "cannot ask for the password ({e}): without a terminal, give it on standard \
             input with --password-stdin"
        ))
    };
    let first = rpassword::prompt_password("Password: ").map_err(no_terminal)?;
    let again = rpassword::prompt_password("Password (again): ").map_err(no_terminal)?;
    if first != again {
        return Err(CliError::Usage("the two passwords differ".into()));
    }
    Ok(first)
}

async fn user_command(db: &DatabaseConnection, command: UserCommand) -> Result<(), CliError> {
    match command {
        UserCommand::Create(c) => {
            // A taken name is refused before the password is asked for.
            accounts::check_username_free(db, &c.username).await?;
            let password = read_password(&c.password)?;
            let user = accounts::create_user(
                db,
                NewUser {
                    username: c.username,
                    password,
                    email: c.email,
                    first_name: c.first_name,
                    last_name: c.last_name,
                    is_staff: c.staff,
                    is_superuser: c.superuser,
                },
            )
            .await?;
            println!("created user {} (id {})", user.username, user.id);
        }
        UserCommand::List => {
            let users = user::Entity::find()
                .order_by_asc(user::Column::Id)
                .all(db)
                .await?;
            println!(
                "{:>6}  {:<20} {:<24} {:<8} {:<6} email",
                "id", "username", "name", "active", "staff"
            );
            for u in users {
                println!(
                    "{:>6}  {:<20} {:<24} {:<8} {:<6} {}",
                    u.id,
                    u.username,
                    u.display_name(),
                    u.is_active,
                    u.is_staff,
                    u.email
                );
            }
        }
        UserCommand::SetPassword { username, password } => {
            let password = read_password(&password)?;
            accounts::set_password_of(db, &username, password).await?;
            println!("password of {username} changed; earlier tokens are revoked");
        }
        UserCommand::Deactivate { username } => {
            accounts::set_active(db, &username, false).await?;
            println!("{username} deactivated; their tokens are revoked");
        }
        UserCommand::Activate { username } => {
            accounts::set_active(db, &username, true).await?;
            println!("{username} activated");
        }
    }
    Ok(())
}
