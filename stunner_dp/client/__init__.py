"""The client side: what talks to a TURN server rather than being one. `turn` (the TURN
client), `probe` and `ice` (`stunner-dp probe`, `stunner-dp ice`) and `dtls` (a memory-BIO DTLS
client). It imports the codec and the config, never the server's network layer."""
