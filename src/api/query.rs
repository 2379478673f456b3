//! Query strings whose errors name the parameter at fault, as the API's
//! other field errors do (`{"before": ["A valid integer is required."]}`):
//! serde's own error for a bad number ("invalid digit found in string")
//! does not say which parameter it was.

use std::collections::BTreeMap;

use actix_web::web::QueryConfig;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The `QueryConfig` of a resource whose query is `T`: a query `T` cannot
/// take is answered 400 keyed by the parameter at fault (the one whose
/// leaving out lets the rest be taken); one without a single culprit with
/// what serde said, as `detail`.
pub fn named<T: DeserializeOwned + 'static>() -> QueryConfig {
    QueryConfig::default().error_handler(|error, request| {
        match at_fault::<T>(request.query_string()) {
            Some((name, problem)) => ApiError::Fields(BTreeMap::from([(name, vec![problem])])),
            None => ApiError::BadRequest(format!("invalid query string: {error}")),
        }
        .into()
    })
}

/// Most parameters a query may have for its culprit to be looked for:
/// each is one more parse of the rest, so a query of thousands would cost
/// the server millions of steps for its error alone.
const MAX_PAIRS: usize = 16;

/// The parameter `T` cannot take in `query`, and what is wrong with it.
fn at_fault<T: DeserializeOwned>(query: &str) -> Option<(String, String)> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    if pairs.len() > MAX_PAIRS {
        return None;
    }
    pairs.iter().find_map(|(name, value)| {
        let others: Vec<&(String, String)> = pairs.iter().filter(|(n, _)| n != name).collect();
        let others = serde_urlencoded::to_string(others).ok()?;
        serde_urlencoded::from_str::<T>(&others).ok()?;
        let given = pairs.iter().filter(|(n, _)| n == name).count();
        let problem = if given > 1 {
            "Give this parameter once.".to_string()
        } else {
            let alone = serde_urlencoded::to_string([(name, value)]).ok()?;
            let error = serde_urlencoded::from_str::<T>(&alone).err()?.to_string();
            problem(value, &error)
        };
        Some((name.clone(), problem))
    })
}

/// What a client is told of a value serde refused with `error`.
fn problem(value: &str, error: &str) -> String {
    let number = value.parse::<i128>().is_ok();
    if error.contains("too large")
        || error.contains("too small")
        || (number && error.contains("invalid digit"))
    {
        // An integer, but not one the parameter takes (a negative count).
        "Ensure this value is within range.".into()
    } else if error.contains("invalid digit") || error.contains("empty string") {
        "A valid integer is required.".into()
    } else {
        error.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // read by serde only
    struct Page {
        q: Option<String>,
        before: Option<i64>,
        limit: Option<u64>,
    }

    fn fault(query: &str) -> Option<(String, String)> {
        at_fault::<Page>(query)
    }

    #[test]
    fn the_parameter_at_fault_is_named() {
        let named = |name: &str, problem: &str| Some((name.to_string(), problem.to_string()));
        let integer = "A valid integer is required.";
        let range = "Ensure this value is within range.";
        assert_eq!(fault("q=abc&before=x1"), named("before", integer));
        assert_eq!(fault("q=abc&limit="), named("limit", integer));
        assert_eq!(fault("limit=-1&q=abc"), named("limit", range));
        assert_eq!(fault("before=99999999999999999999"), named("before", range));
        assert_eq!(fault("q=a&q=b"), named("q", "Give this parameter once."));
        // Two at fault: neither alone lets the rest be taken.
        assert_eq!(fault("before=x&limit=y"), None);
        assert_eq!(fault("q=fine&limit=5"), None);
        // Too many to look through: serde's words, as `detail`.
        let others: String = (0..MAX_PAIRS).map(|i| format!("x{i}=1&")).collect();
        assert_eq!(
            fault(&format!("{}before=x", &others[4..])),
            named("before", integer)
        );
        let long = format!("{others}before=x");
        assert_eq!(fault(&long), None);
    }
}
