//! Tollgate: a metered gateway for the OpenAI Responses API.
//!
//! Data flows one way, and the modules are listed in that order:
//! request → [`auth`] → [`proxy`] (validate/rewrite, upstream, body tap with
//! the [`sse`] scanner and [`usage`] extraction) → [`metering`] (the one
//! end-of-request hook) → [`pricing`] → [`ledger`]. [`reports`] and [`admin`]
//! read and manage what the flow wrote. No module imports one above it in
//! this list, except the HTTP edge ([`http`], started by [`server`]) which wires them together;
//! [`state`] sits below every handler.

pub mod config;
pub mod connection;
pub mod error;
pub mod telemetry;

pub mod auth;
pub mod background;
pub mod ledger;
pub mod limits;
pub mod metering;
pub mod notify;
pub mod pricing;
pub mod proxy;
pub mod sse;
pub mod usage;

pub mod admin;
pub mod export;
pub mod jobs;
pub mod reconcile;
pub mod reports;

pub mod cli;
pub mod demo;
pub mod http;
pub mod mock_upstream;
pub mod pgtemp;
pub mod schema;
pub mod server;
pub mod state;
