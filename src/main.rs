//! The `keel` binary: one executable for every Keel component. Thin by design — argument
//! parsing and wiring; the work lives in the library crates.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

// mimalloc: the gateway's hot path allocates and frees many small buffers per request, and
// glibc's allocator cost about a sixth of its user-space instructions (docs/gateway.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: a microservice platform for Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a topology of processes on this machine (like `docker compose up`).
    Up {
        /// Topology file.
        #[arg(long, short, default_value = "keel.toml")]
        file: PathBuf,
        /// Where services keep their databases and the embedded bus (children see it as
        /// `KEEL_DATA_DIR`).
        #[arg(long, default_value = ".keel")]
        data_dir: PathBuf,
        /// Wipe the data directory first (only a directory Keel created).
        #[arg(long)]
        fresh: bool,
    },
    /// Seed the reference system's demo data through the gateway (once per data directory)
    /// and print commands to try.
    Seed {
        /// The gateway.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
        /// The data directory (default: `KEEL_DATA_DIR`, else `.keel`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the service registry (Eureka-compatible; listens on 127.0.0.1:8761 by default).
    Registry {
        /// A peer registry to replicate with (repeatable), e.g. http://127.0.0.1:8762.
        #[arg(long = "peer", value_name = "URL")]
        peers: Vec<String>,
        #[command(flatten)]
        chassis: keel_chassis::ChassisArgs,
    },
    /// Run the API gateway (Spring Cloud Gateway routes; listens on 127.0.0.1:8080 by default).
    Gateway {
        /// Route file: Keel's layout or a Spring Cloud Gateway application.yml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on, overriding the file's port (e.g. 127.0.0.1:8080 or :8080).
        #[arg(long)]
        listen: Option<String>,
        /// Spring profile(s) whose documents of a multi-document file apply (repeatable).
        #[arg(long = "profile", value_name = "NAME")]
        profiles: Vec<String>,
        /// Runtime worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Check the route file and exit (0 when it loads) instead of serving.
        #[arg(long)]
        check: bool,
    },
    /// Benchmarks that print a baseline measured in the same run beside Keel's figure.
    #[command(subcommand)]
    Bench(Bench),
    /// Run one of the example services.
    #[command(subcommand)]
    Example(Example),
    /// Run one of the reference system's services (food delivery).
    #[command(subcommand)]
    Service(RefService),
    /// Place orders through the gateway at a fixed rate and report outcomes and order →
    /// terminal latency (the reference system must be up: `keel up`).
    Load(LoadArgs),
    /// A load run while service processes of `keel up` are killed (kill -9) and payment
    /// networks fail, then the invariants: every order terminal, none authorized twice,
    /// stock and accounts consistent, order history equal to the services.
    Chaos {
        #[command(flatten)]
        load: LoadArgs,
        /// `keel up`'s data directory (only its processes are killed).
        #[arg(long, default_value = ".keel")]
        data_dir: PathBuf,
        /// Kill one process this often.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        kill_every: Duration,
        /// Processes that may be killed (default: every service and payment network).
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
        /// No payment-network faults.
        #[arg(long)]
        no_network_faults: bool,
    },
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// The gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The registry (order states are read from the order service it lists).
    #[arg(long, default_value = "http://127.0.0.1:8761")]
    registry: String,
    /// Orders per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Several rates, one run each, and the saturation rate (e.g. 50,100,200).
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    rates: Vec<f64>,
    /// How long to place orders (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many orders.
    #[arg(long)]
    count: Option<u64>,
    /// Consumers the orders are spread over.
    #[arg(long, default_value_t = 10)]
    consumers: usize,
    /// Percent of orders paid with the declined test card.
    #[arg(long, default_value_t = 0)]
    declined_percent: u32,
    /// The p99 order → terminal latency a rate must keep to count as sustained.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    p99_target: Duration,
    /// How long to wait for orders to become terminal after the last was placed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    settle: Duration,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

impl LoadArgs {
    fn options(&self) -> ftgo_load::LoadOptions {
        ftgo_load::LoadOptions {
            gateway: self.gateway.clone(),
            registry: self.registry.clone(),
            rate: self.rates.first().copied().unwrap_or(self.rate),
            duration: self.duration,
            count: self.count,
            consumers: self.consumers,
            declined_percent: self.declined_percent,
            settle: self.settle,
            progress: !self.quiet,
        }
    }
}

/// A duration flag (`500ms`, `30s`, `2m`; a bare number is milliseconds): Keel's one parser.
fn parse_duration(s: &str) -> Result<Duration, String> {
    keel_chassis::duration::parse(s)
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Registry: register → seen by a watcher, deregister/kill → removed, memory.
    Registry {
        /// Instances to register.
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
        /// Concurrent registering clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Instances whose heartbeats stop, to measure lease expiry.
        #[arg(long, default_value_t = 100)]
        killed: usize,
        /// Benchmark an already running registry instead of starting one.
        #[arg(long, value_name = "URL")]
        registry: Option<String>,
    },
    /// Message bus: end-to-end throughput and latency beside the raw backend client.
    Bus {
        /// The bus: sqlite://path/bus.db or nats://host:4222.
        #[arg(long, default_value = "sqlite://target/keel-bench/bus.db")]
        backend: String,
        /// Messages for the throughput run.
        #[arg(long, default_value_t = 50_000)]
        messages: usize,
        /// Messages per publish batch.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Rate of the latency run (messages per second).
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// Seconds of the latency run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// NATS only: unacknowledged messages per partition in the raw-client layout
        /// baseline (default: the bus's, twice its pull_batch — 512 unless the URL sets
        /// pull_batch), to measure what that limit costs.
        #[arg(long)]
        layout_max_ack_pending: Option<i64>,
        /// NATS only: publish the raw-client layout baseline without `Nats-Msg-Id`.
        #[arg(long)]
        layout_without_msg_id: bool,
        /// NATS only: the raw-client layout baseline on one stream (a subject per partition)
        /// with a filtered consumer per partition, instead of a stream per partition.
        #[arg(long)]
        layout_one_stream: bool,
        /// NATS only: partitions of the raw-client layout baseline (default: the bus's — 4
        /// unless the URL sets `?partitions=`), to measure what partitioning costs.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        layout_partitions: Option<u32>,
        /// Throughput rounds (Keel and the baselines alternate; medians are reported).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Also report the CPU time per message of the benchmark process and of a broker on
        /// this machine (`--server-pid $(pgrep -x nats-server)`) in each throughput run, read
        /// from /proc over the span the run's rate is measured on (first publish → all handled).
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Sagas: completed three-step sagas per second beside the store's commit bound.
    Saga {
        /// The store: sqlite://path/file.db (one file per service beside it) or postgres://…
        #[arg(long, default_value = "sqlite://target/keel-bench/saga.db")]
        store: String,
        /// The bus: sqlite://path/bus.db or nats://host:4222.
        #[arg(long, default_value = "sqlite://target/keel-bench/saga-bus.db")]
        bus: String,
        /// Sagas to run.
        #[arg(long, default_value_t = 2_000)]
        sagas: usize,
        /// Sagas in flight at once.
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
    },
    /// Gateway: added latency, throughput and memory beside nginx proxying the same upstream.
    Gateway {
        /// Fixed request rate of the latency runs.
        #[arg(long, default_value_t = 2_000)]
        rate: u32,
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Alternating rounds of the fixed-rate runs (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Connections of the saturation runs.
        #[arg(long, default_value_t = 64)]
        connections: u32,
        /// Directory for the generated nginx and route files.
        #[arg(long, default_value = "target/keel-bench/gateway")]
        dir: PathBuf,
        /// The nginx binary (`apt-get install nginx-light`).
        #[arg(long, default_value = "/usr/sbin/nginx")]
        nginx: PathBuf,
        /// The oha binary (`cargo install oha`).
        #[arg(long, default_value = "oha")]
        oha: PathBuf,
        /// Send every request as a `POST` with a JSON body of this many bytes, at least 10 (0: `GET`).
        #[arg(long, default_value_t = 0)]
        body_bytes: usize,
    },
    /// Transactional outbox: commit → delivered at fixed commit rates, beside the commit itself.
    Outbox {
        /// The store: sqlite://path/file.db or postgres://…
        #[arg(long, default_value = "sqlite://target/keel-bench/outbox.db")]
        store: String,
        /// The bus to relay to (default: an embedded bus in a temporary directory).
        #[arg(long)]
        bus: Option<String>,
        /// Commit rates, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        rates: Vec<u64>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

#[derive(Debug, Subcommand)]
enum RefService {
    /// Consumers: order validation for the create-order saga.
    Consumer(keel_chassis::ChassisArgs),
    /// Restaurants, menus and stock.
    Restaurant(keel_chassis::ChassisArgs),
    /// Orders: the public order API and the create-order / cancel-order sagas.
    Order(keel_chassis::ChassisArgs),
    /// Kitchen tickets.
    Kitchen(keel_chassis::ChassisArgs),
    /// Accounts and card authorizations.
    Accounting(keel_chassis::ChassisArgs),
    /// Deliveries and couriers (choreography on accepted tickets).
    Delivery(keel_chassis::ChassisArgs),
    /// A payment-network simulator (`--set app.network=van-a`).
    Van(keel_chassis::ChassisArgs),
    /// Order history: a read model (CQRS) built only from events.
    History(HistoryArgs),
}

#[derive(Debug, clap::Args)]
struct HistoryArgs {
    /// Wipe the view and start a new generation of its consumer groups, then exit: the
    /// service replays every retained event when it next starts (a running one shows the
    /// emptied view at once). Uses the same database as `keel service history` would.
    #[arg(long)]
    rebuild: bool,
    #[command(flatten)]
    chassis: keel_chassis::ChassisArgs,
}

impl RefService {
    /// The service's name and arguments, with `app.database` and `app.bus` placed in
    /// `KEEL_DATA_DIR` (set by `keel up`) unless given explicitly.
    fn args(self) -> (&'static str, keel_chassis::ChassisArgs) {
        let (name, mut args) = match self {
            RefService::Consumer(a) => ("consumer", a),
            RefService::Restaurant(a) => ("restaurant", a),
            RefService::Order(a) => ("order", a),
            RefService::Kitchen(a) => ("kitchen", a),
            RefService::Accounting(a) => ("accounting", a),
            RefService::Delivery(a) => ("delivery", a),
            RefService::Van(a) => ("van", a),
            RefService::History(h) => ("history", h.chassis),
        };
        if let Some(dir) = std::env::var_os("KEEL_DATA_DIR") {
            let dir = PathBuf::from(dir);
            // A network simulator keeps `<network>.db` and uses no bus.
            let network = args
                .set
                .iter()
                .find_map(|s| s.strip_prefix("app.network="))
                .map(str::to_owned);
            let files: Vec<(&str, String)> = match (name, network) {
                ("van", Some(network)) => vec![("app.database", format!("{network}.db"))],
                ("van", None) => Vec::new(),
                _ => vec![
                    ("app.database", format!("{name}.db")),
                    ("app.bus", "bus.db".into()),
                ],
            };
            for (key, file) in files {
                if !args.set.iter().any(|s| s.starts_with(&format!("{key}="))) {
                    args.set
                        .push(format!("{key}=sqlite://{}", dir.join(file).display()));
                }
            }
        }
        (name, args)
    }
}

#[derive(Debug, Subcommand)]
enum Example {
    /// A small greeting service built on the chassis.
    Greeter(keel_chassis::ChassisArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `keel gateway --workers 1` runs on a single-threaded runtime: no work stealing, no
    // cross-thread wake-ups — the shape nginx's one worker has.
    let mut builder = match &cli.command {
        Command::Gateway {
            workers: Some(1), ..
        } => tokio::runtime::Builder::new_current_thread(),
        Command::Gateway {
            workers: Some(n), ..
        } => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads((*n).max(1));
            b
        }
        // A reference service is one of a dozen processes sharing the machine: one thread
        // each (SQLite's own worker threads aside) spares them the work-stealing wake-ups,
        // which cost more CPU than the services' work at the reference load.
        Command::Service(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async move {
        match cli.command {
            Command::Up {
                file,
                data_dir,
                fresh,
            } => up(file, data_dir, fresh).await,
            Command::Seed { gateway, data_dir } => {
                let dir = data_dir
                    .or_else(|| std::env::var_os("KEEL_DATA_DIR").map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from(".keel"));
                let seeded = ftgo_system::seed(&gateway, &dir)
                    .await
                    .map_err(anyhow::Error::msg)?;
                println!(
                    "demo data: {} consumers, {} restaurants (kept in {})",
                    seeded.consumers.len(),
                    seeded.restaurants.len(),
                    dir.join("seed.json").display()
                );
                println!("Try:");
                for c in ftgo_system::try_commands(&gateway, &seeded) {
                    println!("  {c}");
                }
                Ok(())
            }
            Command::Registry { peers, chassis } => keel_registry::run(&chassis, &peers)
                .await
                .map_err(Into::into),
            Command::Gateway {
                config,
                profiles,
                check: true,
                ..
            } => {
                let config =
                    config.ok_or_else(|| anyhow::anyhow!("--check needs --config FILE"))?;
                let c = keel_gateway::GatewayConfig::load(&config, &profiles)?;
                let n = keel_gateway::check(&c)?;
                println!("{}: {n} routes, valid", config.display());
                Ok(())
            }
            Command::Gateway {
                config,
                listen,
                profiles,
                ..
            } => keel_gateway::run(keel_gateway::Options {
                config,
                listen,
                profiles,
            })
            .await
            .map_err(Into::into),
            Command::Bench(Bench::Registry {
                instances,
                clients,
                killed,
                registry,
            }) => keel_bench::registry::run(keel_bench::registry::Options {
                instances,
                clients,
                killed,
                registry,
                self_exe: std::env::current_exe()?,
            })
            .await
            .map_err(anyhow::Error::msg),
            Command::Bench(Bench::Bus {
                backend,
                messages,
                batch,
                rate,
                seconds,
                layout_max_ack_pending,
                layout_without_msg_id,
                layout_one_stream,
                layout_partitions,
                rounds,
                server_pid,
            }) => keel_bench::bus::run(keel_bench::bus::Options {
                backend,
                messages,
                batch,
                rate,
                seconds,
                layout_max_ack_pending,
                layout_msg_id: !layout_without_msg_id,
                layout_one_stream,
                layout_partitions,
                rounds,
                server_pid,
            })
            .await
            .map_err(anyhow::Error::msg),
            Command::Bench(Bench::Gateway {
                rate,
                seconds,
                rounds,
                connections,
                dir,
                nginx,
                oha,
                body_bytes,
            }) => keel_bench::gateway::run(keel_bench::gateway::Options {
                self_exe: std::env::current_exe()?,
                rate,
                seconds,
                rounds,
                connections,
                dir,
                nginx,
                oha,
                body_bytes,
            })
            .await
            .map_err(anyhow::Error::msg),
            Command::Bench(Bench::Saga {
                store,
                bus,
                sagas,
                concurrency,
            }) => keel_bench::saga::run(keel_bench::saga::Options {
                store,
                bus,
                sagas,
                concurrency,
            })
            .await
            .map_err(anyhow::Error::msg),
            Command::Bench(Bench::Outbox {
                store,
                bus,
                rates,
                seconds,
            }) => keel_bench::outbox::run(keel_bench::outbox::Options {
                store,
                bus,
                rates,
                seconds,
            })
            .await
            .map_err(anyhow::Error::msg),
            Command::Service(svc) => {
                let rebuild = matches!(&svc, RefService::History(h) if h.rebuild);
                let (name, args) = svc.args();
                match name {
                    "history" if rebuild => ftgo_history::rebuild_command(&args).await.map(|_| ()),
                    "history" => ftgo_history::run(&args).await,
                    "consumer" => ftgo_consumer::run(&args).await,
                    "restaurant" => ftgo_restaurant::run(&args).await,
                    "kitchen" => ftgo_kitchen::run(&args).await,
                    "accounting" => ftgo_accounting::run(&args).await,
                    "delivery" => ftgo_delivery::run(&args).await,
                    "van" => ftgo_van::run(&args).await,
                    _ => ftgo_order::run(&args).await,
                }
                .map_err(Into::into)
            }
            Command::Load(args) => {
                let reports = ftgo_load::load::run(args.options(), &args.rates, args.p99_target)
                    .await
                    .map_err(anyhow::Error::msg)?;
                if reports.iter().all(ftgo_load::Report::clean) {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!(
                        "some orders failed or did not become terminal"
                    ))
                }
            }
            Command::Chaos {
                load,
                data_dir,
                kill_every,
                targets,
                no_network_faults,
            } => {
                let targets = if targets.is_empty() {
                    ftgo_load::chaos::DEFAULT_TARGETS
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect()
                } else {
                    targets
                };
                let report = ftgo_load::chaos::run(ftgo_load::ChaosOptions {
                    load: load.options(),
                    data_dir,
                    kill_every,
                    targets,
                    network_faults: !no_network_faults,
                })
                .await
                .map_err(anyhow::Error::msg)?;
                println!("{report}");
                if report.violations.is_empty() {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!(
                        "{} invariant violations",
                        report.violations.len()
                    ))
                }
            }
            Command::Example(Example::Greeter(args)) => {
                keel_example_greeter::run(&args).await.map_err(Into::into)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Marks a data directory as Keel's, so `--fresh` never wipes anything else.
const DATA_DIR_MARKER: &str = ".keel-data-dir";

fn prepare_data_dir(dir: &std::path::Path, fresh: bool) -> anyhow::Result<PathBuf> {
    if fresh && dir.exists() {
        if !dir.join(DATA_DIR_MARKER).exists() {
            anyhow::bail!(
                "--fresh: {} was not created by keel up (no {DATA_DIR_MARKER}); remove it yourself",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(DATA_DIR_MARKER), "")?;
    Ok(std::fs::canonicalize(dir)?)
}

async fn up(file: PathBuf, data_dir: PathBuf, fresh: bool) -> anyhow::Result<()> {
    let topology = keel_supervisor::Topology::load(&file)?;
    let data_dir = prepare_data_dir(&data_dir, fresh)?;
    let self_exe = std::env::current_exe()?;
    let shutdown = tokio_util_token();
    let token = shutdown.clone();
    tokio::spawn(async move {
        keel_chassis::wait_for_signal().await;
        token.cancel();
    });
    // Children write to a pipe, so they would log JSON; on a terminal, people want text.
    let mut env = vec![(
        "KEEL_DATA_DIR".to_owned(),
        data_dir.to_string_lossy().into_owned(),
    )];
    if std::io::stdout().is_terminal() && std::env::var_os("KEEL_LOG_FORMAT").is_none() {
        env.push(("KEEL_LOG_FORMAT".to_owned(), "text".to_owned()));
    }
    let options = keel_supervisor::Options {
        self_exe,
        env,
        ..Default::default()
    };
    keel_supervisor::Supervisor::new(topology, options)
        .run(shutdown)
        .await?;
    Ok(())
}

fn tokio_util_token() -> keel_supervisor::CancellationToken {
    keel_supervisor::CancellationToken::new()
}
