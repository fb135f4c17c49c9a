pub mod init;
pub mod out;
pub mod run;
pub mod validate;
