//! A listener's routes, and which of their templates a request's path matches, known before
//! the router runs.
//!
//! The layers around the routes (request id, span, metrics, the token or peer check, body
//! timeout, panic catcher) need the route template, and used to get it by wrapping every
//! route: axum's `Router::layer` and `route_layer` wrap each method of each route in every
//! layer, and each layer boundary is a boxed service that axum clones for every request,
//! an allocation and atomic reference counts per layer before a create's handler ran: 17%
//! of the leader's CPU at 64 clients (docs/benchmarks.md, issue 16's tenth pass). Now the
//! layers wrap the router once, and [`Template`] tells them the route: [`Routes::route`]
//! records each template in a table of the same matcher axum routes with (`matchit`), as it
//! adds the route, so the table and the router cannot disagree.

use std::sync::Arc;

use axum::handler::Handler;
use axum::routing::MethodRouter;
use axum::Router;

/// The route template a request matched (`/cookies/{cookie}`), in its extensions; absent
/// when no route matches (the 404 fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template(pub &'static str);

/// The templates of a listener's routes.
#[derive(Default)]
pub struct Table(matchit::Router<&'static str>);

impl Table {
    /// The template `path` matches, as axum's router matches it.
    pub fn template(&self, path: &str) -> Option<Template> {
        self.0.at(path).ok().map(|m| Template(m.value))
    }
}

/// A router under construction, and the table of its templates.
pub struct Routes<S> {
    router: Router<S>,
    table: Table,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            table: Table::default(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// Add a route, and its template to the table.
    pub fn route(mut self, template: &'static str, methods: MethodRouter<S>) -> Self {
        // The templates are this program's own constants: a bad one fails every test.
        self.table
            .0
            .insert(template, template)
            .expect("route templates are valid and distinct");
        self.router = self.router.route(template, methods);
        self
    }

    /// The router (`fallback` for paths no route matches) and the table.
    pub fn finish<H, T>(self, fallback: H) -> (Router<S>, Arc<Table>)
    where
        H: Handler<T, S>,
        T: 'static,
    {
        (self.router.fallback(fallback), Arc::new(self.table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    /// The table matches what the router routes: the same paths reach a route, the same fall
    /// through to the fallback, whatever their shape.
    #[tokio::test]
    async fn the_table_agrees_with_the_router() {
        let templates = [
            "/",
            "/cookies",
            "/cookies/{cookie}",
            "/cluster/members/{id}/promote",
        ];
        let mut routes = Routes::<()>::default();
        for t in templates {
            routes = routes.route(t, get(|| async { "routed" }));
        }
        let (router, table) = routes.finish(|| async { StatusCode::NOT_FOUND });
        let paths = [
            ("/", Some("/")),
            ("/cookies", Some("/cookies")),
            ("/cookies/", None),
            ("/cookies/a", Some("/cookies/{cookie}")),
            ("/cookies/a%2Fb", Some("/cookies/{cookie}")),
            ("/cookies/a/b", None),
            ("//cookies", None),
            ("/Cookies", None),
            (
                "/cluster/members/3/promote",
                Some("/cluster/members/{id}/promote"),
            ),
            ("/cluster/members/3", None),
            ("/nothing", None),
        ];
        for (path, want) in paths {
            assert_eq!(table.template(path), want.map(Template), "{path}");
            let resp = router
                .clone()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let routed = resp.status() == StatusCode::OK;
            assert_eq!(routed, want.is_some(), "{path}");
        }
    }
}
