"""Knowledge service: documents chunked, embedded and stored in Qdrant; hybrid search that grounds answers."""
