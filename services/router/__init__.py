"""Router: decides which tier answers a chat, says why, and streams the answer."""
