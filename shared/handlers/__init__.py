"""One module per entry point and operator verb: decode the input, ask the core, carry out its
answer through the clients. Each entry point imports only its handler and the clients it uses."""
