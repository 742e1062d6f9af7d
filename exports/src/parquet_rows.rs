//! Parquet files as rows of JSON values, so that one set of record rules ([`crate::records`])
//! applies to JSON Lines and Parquet alike. Read with the Arrow project's reader (`parquet` with
//! its `arrow` feature); each row becomes the object a JSON Lines line would hold: strings,
//! numbers and booleans as themselves, lists as arrays, structs (a message's `role`/`content`) as
//! objects, nulls as `null` (a null known field counts as absent).
//!
//! Types a JSON record has no counterpart for are converted where the meaning is plain (dates and
//! timestamps as ISO 8601 text, UTF-8 binary as text, dictionary-encoded columns as their
//! values); anything else is an error naming the column and its Arrow type.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, OffsetSizeTrait};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Number, Value};

use crate::error::{Error, IoContext, Result};
use crate::records::Location;

fn parquet_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Call `f` with every row of the file, in order, as a JSON object, with its location.
pub fn for_each_row(path: &Path, mut f: impl FnMut(Location, Value) -> Result<()>) -> Result<()> {
    let file = File::open(path).at(path)?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))?;
    // Row-group boundaries, to name the group and the row within it in errors.
    let groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows() as usize)
        .collect();
    let reader = builder.build().map_err(|e| parquet_error(path, e))?;
    let (mut group, mut group_start, mut index) = (0usize, 0usize, 0usize);
    for batch in reader {
        let batch = batch.map_err(|e| parquet_error(path, e))?;
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            while group + 1 < groups.len() && index >= group_start + groups[group] {
                group_start += groups[group];
                group += 1;
            }
            let at = Location::Row {
                group,
                row: index - group_start,
                index,
            };
            let mut row = Map::new();
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                let v = value(column.as_ref(), i).map_err(|message| Error::Record {
                    path: path.to_path_buf(),
                    at,
                    message: format!("column `{}`: {message}", field.name()),
                })?;
                row.insert(field.name().clone(), v);
            }
            f(at, Value::Object(row))?;
            index += 1;
        }
    }
    Ok(())
}

fn number(n: Option<Number>) -> Value {
    // NaN and infinities have no JSON number; they become null like a missing value.
    n.map(Value::Number).unwrap_or(Value::Null)
}

fn list<O: OffsetSizeTrait>(a: &dyn Array, i: usize) -> std::result::Result<Value, String> {
    let items = a.as_list::<O>().value(i);
    (0..items.len())
        .map(|j| value(items.as_ref(), j))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn text(s: String) -> Value {
    Value::String(s)
}

/// Row `i` of `a` as JSON.
fn value(a: &dyn Array, i: usize) -> std::result::Result<Value, String> {
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    macro_rules! int {
        ($t:ty) => {
            Value::from(a.as_primitive::<$t>().value(i))
        };
    }
    macro_rules! dict {
        ($k:ty) => {{
            let d = a.as_dictionary::<$k>();
            value(d.values().as_ref(), d.keys().value(i) as usize)?
        }};
    }
    Ok(match a.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float16 => number(Number::from_f64(
            a.as_primitive::<Float16Type>().value(i).to_f64(),
        )),
        DataType::Float32 => number(Number::from_f64(f64::from(
            a.as_primitive::<Float32Type>().value(i),
        ))),
        DataType::Float64 => number(Number::from_f64(a.as_primitive::<Float64Type>().value(i))),
        DataType::Utf8 => text(a.as_string::<i32>().value(i).to_owned()),
        DataType::LargeUtf8 => text(a.as_string::<i64>().value(i).to_owned()),
        DataType::Utf8View => text(a.as_string_view().value(i).to_owned()),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let bytes = match a.data_type() {
                DataType::Binary => a.as_binary::<i32>().value(i),
                DataType::LargeBinary => a.as_binary::<i64>().value(i),
                _ => a.as_binary_view().value(i),
            };
            text(
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| "binary value that is not UTF-8 text".to_string())?,
            )
        }
        DataType::Date32 => text(
            a.as_primitive::<Date32Type>()
                .value_as_date(i)
                .ok_or("date out of range")?
                .to_string(),
        ),
        DataType::Date64 => text(
            a.as_primitive::<Date64Type>()
                .value_as_date(i)
                .ok_or("date out of range")?
                .to_string(),
        ),
        DataType::Timestamp(unit, _) => {
            let t = match unit {
                TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value_as_datetime(i),
                TimeUnit::Millisecond => a
                    .as_primitive::<TimestampMillisecondType>()
                    .value_as_datetime(i),
                TimeUnit::Microsecond => a
                    .as_primitive::<TimestampMicrosecondType>()
                    .value_as_datetime(i),
                TimeUnit::Nanosecond => a
                    .as_primitive::<TimestampNanosecondType>()
                    .value_as_datetime(i),
            };
            text(
                t.ok_or("timestamp out of range")?
                    .format("%Y-%m-%dT%H:%M:%S%.f")
                    .to_string(),
            )
        }
        DataType::List(_) => list::<i32>(a, i)?,
        DataType::LargeList(_) => list::<i64>(a, i)?,
        DataType::FixedSizeList(_, _) => {
            let items = a.as_fixed_size_list().value(i);
            Value::Array(
                (0..items.len())
                    .map(|j| value(items.as_ref(), j))
                    .collect::<std::result::Result<_, _>>()?,
            )
        }
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let mut obj = Map::new();
            for (field, column) in fields.iter().zip(s.columns()) {
                obj.insert(field.name().clone(), value(column.as_ref(), i)?);
            }
            Value::Object(obj)
        }
        DataType::Map(_, _) => {
            let entries = a.as_map().value(i);
            let (keys, values) = (entries.column(0), entries.column(1));
            let mut obj = Map::new();
            for j in 0..entries.len() {
                let key = match value(keys.as_ref(), j)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                obj.insert(key, value(values.as_ref(), j)?);
            }
            Value::Object(obj)
        }
        DataType::Dictionary(key, _) => match key.as_ref() {
            DataType::Int8 => dict!(Int8Type),
            DataType::Int16 => dict!(Int16Type),
            DataType::Int32 => dict!(Int32Type),
            DataType::Int64 => dict!(Int64Type),
            DataType::UInt8 => dict!(UInt8Type),
            DataType::UInt16 => dict!(UInt16Type),
            DataType::UInt32 => dict!(UInt32Type),
            DataType::UInt64 => dict!(UInt64Type),
            other => {
                return Err(format!(
                    "dictionary keys of Arrow type {other} are not supported"
                ))
            }
        },
        other => return Err(format!("Arrow type {other} has no JSON counterpart here")),
    })
}
