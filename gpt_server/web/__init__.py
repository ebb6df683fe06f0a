"""What every HTTP app here (gateway, controller, worker) shares: responses, error rendering,
body limits and serving."""
