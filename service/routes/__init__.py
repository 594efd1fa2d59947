"""HTTP routes, one APIRouter per concern (mounted by service.app.create_app)."""
