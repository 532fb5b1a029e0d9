"""HTTP routers: parse, call one service function, return."""
