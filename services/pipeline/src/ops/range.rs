//! Range checks for float parameters, one message per kind so every op words them alike.
//! Written with `contains` so NaN fails too.

/// A factor in `0..=max`: brightness, contrast, saturation.
pub(crate) fn factor(value: f32, max: f32) -> Result<f32, String> {
    if value.is_finite() && (0.0..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("factor must be >= 0 and <= {max}, got {value}"))
    }
}

/// `name` in `min..=max`.
pub(crate) fn between(name: &str, value: f32, min: f32, max: f32) -> Result<f32, String> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{name} must be between {min} and {max}, got {value}"
        ))
    }
}
