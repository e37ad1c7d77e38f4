"""The daemon side: what `stunnerd` runs. `stunnerd` (signals, drain, health, metrics),
`supervisor` and `worker` (`-u N` processes) with the `pipe` protocol between them, and
`origin` (where configs come from: a file or the CDS server). Nothing here is imported by the
library layers below (`net`, `turn`, `stun`)."""
