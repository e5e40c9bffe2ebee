"""The Cocktail gateway: gRPC services, engines, scheduling, metrics and settings."""
