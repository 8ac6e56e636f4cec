"""Several instances sharing one Redis, as a load balancer would spread users over them."""
