//! The route model: Gateway API objects compiled into one immutable snapshot plus statuses.
