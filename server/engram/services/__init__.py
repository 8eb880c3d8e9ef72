"""Services: the business rules and transactions behind the gRPC servicers."""
