//! `chat-bench`: the load generator, a binary of its own so that the server
//! carries none of it. Prints a summary and one JSON line per run.

use clap::Parser;

use chat_bench::BenchError;

/// Longest a load run may send for: the generator always stops by itself.
const MAX_BENCH_SECONDS: u64 = 600;

/// Measures a running chat server (see BENCHMARKS.md). Every run is bounded
/// in count and time and stops by itself.
#[derive(Debug, Parser)]
#[command(name = "chat-bench", version, about)]
enum BenchCommand {
    /// Pairs of users exchanging messages: throughput, latency, loss.
    Load {
        /// Server base URL; repeat to spread pairs over several instances.
        #[arg(long = "url", default_value = "http://127.0.0.1:8000")]
        urls: Vec<String>,
        /// Pairs of users: the first of each sends, the second receives.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        pairs: u64,
        /// How long to send, in seconds.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_BENCH_SECONDS))]
        duration: u64,
        /// Total messages per second; 0 = as fast as the window allows. At a
        /// rate, every message due within the duration is sent, late if the
        /// window or the generator's CPU held it back (the run lasts longer).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Unacknowledged messages each sender may have in flight.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        window: u64,
        /// Loopback source addresses to spread connections over (127.0.0.1, .2, …).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=250))]
        sources: u64,
        /// Reactions per second in total, each receiver to messages it got (0: none).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
        reactions: u64,
        /// Edits per second in total, each sender of messages it sent (0: none).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
        edits: u64,
        /// Times the newest page of history (50 messages) is asked for after the run (0: none).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
        history_pages: u64,
        /// Words of text after each message's numbers (0: the numbers alone).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=500))]
        words: u64,
        /// A server's process id, to report its CPU time per delivered
        /// message (repeat for every instance).
        #[arg(long = "server-pid")]
        server_pids: Vec<u32>,
        /// Give each message a `client_id`, as the web client does.
        #[arg(long)]
        client_ids: bool,
        /// The database server's process name on this machine (`postgres`,
        /// `mariadbd`), for its CPU time per delivered message.
        #[arg(long)]
        database_process: Option<String>,
    },
    /// A bystander's latency, quiet and while one account attacks through
    /// a group of connected members (issue #26's amplification patterns).
    Attack {
        /// Server base URL.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// Members of the attacker's group, all connected.
        #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(3..=10_000))]
        members: u64,
        /// Groups of those members the attacker owns, flooded in turn (each
        /// costs one of her 30 group changes a minute).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=25))]
        groups: u64,
        /// Sockets the flooding patterns send from at once, sharing the rate.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=32))]
        sockets: u64,
        /// Messages written into the attacker's first group before the phases
        /// (what `history` pages through).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
        history: u64,
        /// Seconds each phase lasts.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
        seconds: u64,
        /// The attacker's requests (or frames) per second, in total.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        rate: u64,
        /// The patterns, in order (default: all seven).
        #[arg(long = "pattern", value_enum)]
        patterns: Vec<chat_bench::Pattern>,
    },
    /// Many authorized idle sessions: server memory per session, then latency.
    Idle {
        /// Server base URL.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// Users the sessions belong to (the server's MAX_SESSIONS_PER_USER must allow sessions/users each).
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// Authorized sessions to open and hold.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        sessions: u64,
        /// The server's process id, to read its RSS from /proc.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Loopback source addresses to spread connections over (127.0.0.1, .2, …).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=250))]
        sources: u64,
        /// Messages timed between two sessions once all are open.
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Seconds to sample the idle server's CPU time over (needs --server-pid; 0: skip).
        #[arg(long, default_value_t = 0)]
        cpu_seconds: u64,
        /// Sessions that each send one 60 KiB frame once all are idle (RSS read again after).
        #[arg(long, default_value_t = 0)]
        large: usize,
        /// Give each user a direct conversation (users in pairs), as real users have.
        #[arg(long)]
        paired: bool,
        /// Each session asks get_contacts once authorized, as a client does.
        #[arg(long)]
        contacts: bool,
    },
    /// One group of many connected members: send to the last member's
    /// delivery, deliveries per second, loss, Redis commands per message.
    Group {
        /// Server base URL; repeat to spread the members over several instances.
        #[arg(long = "url", default_value = "http://127.0.0.1:8000")]
        urls: Vec<String>,
        /// Members of the group, all connected (the server's MAX_GROUP_MEMBERS must allow them).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..=100_000))]
        members: u64,
        /// How many of them send.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        senders: u64,
        /// How long to send, in seconds.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_BENCH_SECONDS))]
        duration: u64,
        /// Total messages per second; 0 = as fast as the window allows. At a
        /// rate, every message due within the duration is sent, late if held
        /// back (the run lasts longer).
        #[arg(long, default_value_t = 10)]
        rate: u64,
        /// Unacknowledged messages each sender may have in flight.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        window: u64,
        /// Loopback source addresses to spread connections over (127.0.0.1, .2, …).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=250))]
        sources: u64,
        /// The instances' Redis, to count the commands each message cost.
        #[arg(long)]
        redis: Option<String>,
    },
    /// Pairs through one address (a load balancer) while the instances
    /// behind it restart: reconnects, resends, then checks the history.
    Churn {
        /// The balancer's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// Pairs of users: the first of each sends, the second receives.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        pairs: u64,
        /// How long to send, in seconds.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=MAX_BENCH_SECONDS))]
        duration: u64,
        /// Total messages per second.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        rate: u64,
        /// Loopback source addresses to spread connections over (127.0.0.1, .2, …).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=250))]
        sources: u64,
    },
    /// Print SQL that fills a freshly migrated database (holding one
    /// account, `seed`) with users, conversations and messages for `search`.
    SearchFill {
        #[command(flatten)]
        model: SearchModel,
        /// Which database's SQL.
        #[arg(long, value_enum)]
        dialect: chat_bench::Dialect,
    },
    /// Searches of one and two words on a database `search-fill` filled,
    /// while messages are written: latency and hits.
    Search {
        /// Server base URL.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        #[command(flatten)]
        model: SearchModel,
        /// Sessions that search (one user each).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        searchers: u64,
        /// Searches of each kind (one word, two words).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        queries: u64,
        /// Searches per second, in total.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        search_rate: u64,
        /// Sessions that write meanwhile (one user each).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        writers: u64,
        /// Messages per second they write, in total (0: none).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
        write_rate: u64,
    },
    /// Attachments: one large upload and download (MiB/s), then many uploads
    /// at once with the server's RSS sampled (its growth).
    Files {
        /// Server base URL.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// The single upload's size in MiB (the server's MAX_ATTACHMENT_BYTES must allow it).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        size_mib: u64,
        /// Uploads at once, one user each.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000))]
        concurrent: u64,
        /// Each of their sizes in MiB.
        #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        each_mib: u64,
        /// The server's process id, to sample its RSS from /proc.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// A realistic mix on a population `mix-fill` loaded: Poisson messages
    /// into direct conversations and long-tailed groups, typing, read marks,
    /// reconnects with catch-up (BENCHMARKS.md "A realistic mix").
    Mix {
        /// Server base URL; repeat for several instances (a user's two
        /// sessions then go to two of them).
        #[arg(long = "url", default_value = "http://127.0.0.1:8000")]
        urls: Vec<String>,
        #[command(flatten)]
        population: MixPopulation,
        /// How long to send, in seconds.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=MAX_BENCH_SECONDS))]
        duration: u64,
        /// Messages per second, in total (a Poisson process over the users).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// The share of messages preceded by `typing` (sent 1–3 s after it).
        #[arg(long, default_value_t = 0.3)]
        typing: f64,
        /// The share of received messages marked read.
        #[arg(long, default_value_t = 0.5)]
        reads: f64,
        /// The share of sessions that drop and reconnect each minute.
        #[arg(long, default_value_t = 0.01)]
        reconnects: f64,
        /// Loopback source addresses to spread connections over (127.0.0.1, .2, …).
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=250))]
        sources: u64,
        /// The generator's threads, the sessions spread over them.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
        threads: u64,
        /// A server's process id, for its CPU time and RSS (repeat for every instance).
        #[arg(long = "server-pid")]
        server_pids: Vec<u32>,
        /// The instances' Redis, for its CPU time and commands per message.
        #[arg(long)]
        redis: Option<String>,
        /// The database server's process name on this machine (`postgres`,
        /// `mariadbd`), for its CPU time per message.
        #[arg(long)]
        database_process: Option<String>,
    },
    /// Print SQL that loads `mix`'s population into a freshly migrated,
    /// empty database.
    MixFill {
        #[command(flatten)]
        population: MixPopulation,
        /// Which database's SQL.
        #[arg(long, value_enum)]
        dialect: chat_bench::Dialect,
    },
    /// Start `chat-server` on a fresh SQLite file and time it to /readyz 200.
    Startup {
        /// The `chat-server` binary to start (default: the one beside `chat-bench`).
        #[arg(long)]
        server: Option<std::path::PathBuf>,
        /// How many starts to time.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
        runs: u64,
    },
}

/// The model `search-fill` writes and `search` rebuilds: give both the same.
#[derive(Debug, clap::Args)]
struct SearchModel {
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
    users: u64,
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    conversations: u64,
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    messages: u64,
    /// The generator's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl SearchModel {
    fn model(&self) -> chat_bench::Model {
        chat_bench::Model {
            users: self.users as usize,
            conversations: self.conversations as usize,
            messages: self.messages as usize,
            seed: self.seed,
        }
    }
}

/// The population `mix-fill` loads and `mix` rebuilds: give both the same.
#[derive(Debug, clap::Args)]
struct MixPopulation {
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(3..=1_000_000))]
    users: u64,
    /// The generator's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

async fn run(command: BenchCommand) -> Result<(), BenchError> {
    match command {
        BenchCommand::Load {
            urls,
            pairs,
            duration,
            rate,
            window,
            sources,
            reactions,
            edits,
            history_pages,
            words,
            server_pids,
            client_ids,
            database_process,
        } => {
            let options = chat_bench::LoadOptions {
                urls,
                pairs: pairs as usize,
                duration: std::time::Duration::from_secs(duration),
                rate,
                window: window as usize,
                sources: sources as usize,
                reactions,
                edits,
                history_pages: history_pages as usize,
                words: words as usize,
                server_pids,
                client_ids,
                database_process,
            };
            chat_bench::print(&chat_bench::load(options).await?);
        }
        BenchCommand::Group {
            urls,
            members,
            senders,
            duration,
            rate,
            window,
            sources,
            redis,
        } => {
            let options = chat_bench::GroupOptions {
                urls,
                members: members as usize,
                senders: senders as usize,
                duration: std::time::Duration::from_secs(duration),
                rate,
                window: window as usize,
                sources: sources as usize,
                redis,
            };
            chat_bench::print(&chat_bench::group(options).await?);
        }
        BenchCommand::Churn {
            url,
            pairs,
            duration,
            rate,
            sources,
        } => {
            let options = chat_bench::ChurnOptions {
                url,
                pairs: pairs as usize,
                duration: std::time::Duration::from_secs(duration),
                rate,
                sources: sources as usize,
            };
            chat_bench::print(&chat_bench::churn(options).await?);
        }
        BenchCommand::Idle {
            url,
            users,
            sessions,
            server_pid,
            sources,
            messages,
            cpu_seconds,
            large,
            paired,
            contacts,
        } => {
            let options = chat_bench::IdleOptions {
                url,
                users,
                sessions: sessions as usize,
                server_pid,
                sources: sources as usize,
                messages,
                cpu_seconds,
                large: large.min(sessions as usize),
                paired,
                contacts,
            };
            chat_bench::print(&chat_bench::idle(options).await?);
        }
        BenchCommand::MixFill {
            population,
            dialect,
        } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            chat_bench::fill_population(
                population.users as usize,
                population.seed,
                dialect,
                &mut out,
            )
            .and_then(|()| std::io::Write::flush(&mut out))
            .map_err(|e| BenchError::Setup(format!("writing the SQL: {e}")))?;
        }
        BenchCommand::Mix {
            urls,
            population,
            duration,
            rate,
            typing,
            reads,
            reconnects,
            sources,
            threads,
            server_pids,
            redis,
            database_process,
        } => {
            let options = chat_bench::MixOptions {
                urls,
                users: population.users as usize,
                seed: population.seed,
                duration: std::time::Duration::from_secs(duration),
                rate,
                typing,
                reads,
                reconnects_per_minute: reconnects,
                sources: sources as usize,
                threads: threads as usize,
                server_pids,
                redis,
                database_process,
            };
            chat_bench::print(&chat_bench::mix(options).await?);
        }
        BenchCommand::SearchFill { model, dialect } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            chat_bench::fill(&model.model(), dialect, &mut out)
                .and_then(|()| std::io::Write::flush(&mut out))
                .map_err(|e| BenchError::Setup(format!("writing the SQL: {e}")))?;
        }
        BenchCommand::Search {
            url,
            model,
            searchers,
            queries,
            search_rate,
            writers,
            write_rate,
        } => {
            let options = chat_bench::SearchOptions {
                url,
                model: model.model(),
                searchers: searchers as usize,
                queries: queries as usize,
                search_rate,
                writers: writers as usize,
                write_rate,
            };
            chat_bench::print(&chat_bench::search(options).await?);
        }
        BenchCommand::Attack {
            url,
            members,
            groups,
            sockets,
            history,
            seconds,
            rate,
            patterns,
        } => {
            let patterns = if patterns.is_empty() {
                use chat_bench::Pattern::*;
                vec![Rename, Fanout, Typing, Reconnect, Roster, Read, History]
            } else {
                patterns
            };
            let options = chat_bench::AttackOptions {
                url,
                members: members as usize,
                groups: groups as usize,
                sockets: sockets as usize,
                history: history as usize,
                phase: std::time::Duration::from_secs(seconds),
                rate,
                patterns,
            };
            chat_bench::print(&chat_bench::attack(options).await?);
        }
        BenchCommand::Files {
            url,
            size_mib,
            concurrent,
            each_mib,
            pid,
        } => {
            let options = chat_bench::FilesOptions {
                url,
                size_mib,
                concurrent,
                each_mib,
                pid,
            };
            chat_bench::print(&chat_bench::files(options).await?);
        }
        BenchCommand::Startup { runs, server } => {
            let server = server.map_or_else(sibling_server, Ok)?;
            chat_bench::print(&chat_bench::startup(&server, runs as usize).await?);
        }
    }
    Ok(())
}

/// `chat-server` beside this binary (both are built into the same directory).
fn sibling_server() -> Result<std::path::PathBuf, BenchError> {
    let exe =
        std::env::current_exe().map_err(|e| BenchError::Setup(format!("current exe: {e}")))?;
    Ok(exe.with_file_name("chat-server"))
}

fn main() {
    let command = BenchCommand::parse();
    if let Err(e) = actix_rt::System::new().block_on(run(command)) {
        eprintln!("chat-bench: {e}");
        std::process::exit(1);
    }
}
