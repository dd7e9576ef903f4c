"""The gRPC face of a node: servicers and request validation.

The only modules of the server that import the generated code
(``flashstock.v1``); everything below them speaks in the client's types.
"""
