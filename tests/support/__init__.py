"""Real test peers: a DNS server and a scripted SMTP sink, on loopback only."""
