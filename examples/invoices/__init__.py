"""An invoice-dispute process: a second, different app on pm's public API (see README "Writing a new process")."""
