//! End-to-end tests against real processes: a private nats-server per test, every role a
//! real `pixelmesh` process (or the real Docker engine, Garage, Chromium), real gRPC and HTTP
//! over loopback. One test binary with a module per area, not a binary per area: each of
//! those compiled its own copy of the generic client code and linked the whole mesh again.
//! cargo nextest still runs every test in its own process (.config/nextest.toml); pick an
//! area with a filter such as `-E 'test(/^cli::/)'`.

mod all;
mod api;
mod batch;
mod browser;
mod budget;
mod cli;
mod compose;
mod contract;
mod control;
mod events;
mod fanout;
mod grpc_api;
mod images;
mod keys;
mod load;
mod mesh;
mod objects;
mod observability;
mod outage;
mod protection;
mod scale;
mod tenants;
mod tiling;
mod urls;
